"Shared pytest set-up: headless matplotlib, deterministic CPU threads."
import os

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
