"""The course (issue 17): the outline in nbs/course.ipynb names notebooks that exist, and every lesson opens with
its goals, prerequisites and a measured time, asks questions, ends with exercises whose solutions run under
nbdev_test and check their result, and is safe to Run All (slow or downloading cells sit behind a switch).
These read the notebooks' text only; nbdev_test runs the solutions."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
LESSONS = ["02d_simulate", "03b_labels", "07_crf", "09_metrics", "20_tutorial_synthetic", "21_tutorial_cryoppp"]
SWITCHES = ("RUN_SLOW", "DOWNLOAD")   # the variables that guard slow and downloading cells, False by default


def cells(stem: str) -> list:
    "The cells of nbs/<stem>.ipynb as (type, source) pairs."
    nb = json.loads((NBS / f"{stem}.ipynb").read_text(encoding="utf-8"))
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def directives(src: str) -> dict:
    "nbdev/Quarto directives at the top of a cell: `#| code-fold: true` -> {'code-fold': 'true'}."
    found = {}
    for line in src.splitlines():
        m = re.match(r"#\|\s*([\w-]+):?\s*(.*?)\s*$", line)
        if not m: break
        found[m[1]] = m[2]
    return found


def outline_names() -> set:
    "Notebook names the course outline refers to: links `x.ipynb` and backticked names like `02d_simulate`."
    text = "\n".join(src for _, src in cells("course"))
    return set(re.findall(r"([\w-]+)\.ipynb", text)) | set(re.findall(r"`(\d\d[a-z]?_\w+)`", text))


def test_outline_names_existing_notebooks():
    names = outline_names()
    missing = sorted(n for n in names if not (NBS / f"{n}.ipynb").is_file())
    assert not missing, f"nbs/course.ipynb names notebooks that do not exist: {missing}"
    assert set(LESSONS) <= names, f"the outline leaves out the lessons {sorted(set(LESSONS) - names)}"


def test_outline_plans_and_install_command():
    text = "\n".join(src for _, src in cells("course"))
    for heading in ("1-day course", "three 2-hour classes", "Instructor notes", "Before the course"):
        assert re.search(rf"^#+ .*{re.escape(heading)}", text, re.M | re.I), f"course.ipynb has no '{heading}' section"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    demo = re.search(r'id="demo-command"></a>\s*```bash\s*(.+?)\s*```', readme, re.S)[1]
    assert demo in text, f"course.ipynb should give students README's install command: {demo}"


@pytest.mark.parametrize("stem", LESSONS)
def test_lesson_opens_with_goals_prerequisites_time(stem):
    intro = [src for kind, src in cells(stem)[:3] if kind == "markdown" and "Learning goals" in src]
    assert intro, f"{stem}.ipynb: no 'Learning goals' block in its first cells"
    block = intro[0]
    goals = block.split("Learning goals", 1)[1].split("**Prerequisites", 1)[0]
    n = len(re.findall(r"^\s*[-*] ", goals, re.M))
    assert 3 <= n <= 5, f"{stem}.ipynb: {n} learning goals (want 3 to 5 bullets)"
    assert "**Prerequisites" in block, f"{stem}.ipynb: no prerequisites"
    time = re.search(r"\*\*Time\.?\*\*(.*)", block, re.S)
    assert time and re.search(r"\d+\s*(s|min)\b", time[1]), f"{stem}.ipynb: no measured time (seconds or minutes)"


@pytest.mark.parametrize("stem", LESSONS)
def test_lesson_asks_questions(stem):
    n = sum(src.count("**Stop and think") for kind, src in cells(stem) if kind == "markdown")
    assert n >= 2, f"{stem}.ipynb: {n} 'Stop and think' questions in the text (want at least 2)"


@pytest.mark.parametrize("stem", LESSONS)
def test_every_exercise_has_a_tested_solution(stem):
    cs = cells(stem)
    start = [i for i, (kind, src) in enumerate(cs) if kind == "markdown" and re.search(r"^## Exercises", src, re.M)]
    assert len(start) == 1, f"{stem}.ipynb: want one '## Exercises' section, found {len(start)}"
    exercises, problems = {}, []
    for i, (kind, src) in enumerate(cs[start[0]:], start[0]):
        for m in re.finditer(r"^### Exercise (\d+)", src, re.M) if kind == "markdown" else ():
            exercises[int(m[1])] = i
    assert exercises, f"{stem}.ipynb: the exercises section has no '### Exercise N'"
    assert sorted(exercises) == list(range(1, len(exercises) + 1)), f"{stem}.ipynb: exercises numbered {sorted(exercises)}"
    for k, i in exercises.items():
        sol = [src for kind, src in cs[i + 1:] if kind == "code" and re.search(rf"^# Solution {k}\b", src, re.M)]
        if not sol: problems.append(f"exercise {k} has no '# Solution {k}' cell after it"); continue
        d = directives(sol[0])
        if d.get("code-fold") != "true": problems.append(f"solution {k} is not collapsed (#| code-fold: true)")
        if {"slow", "eval"} & d.keys() or "notest" in d: problems.append(f"solution {k} does not run under nbdev_test")
        if not re.search(r"\bassert\b|\btest_(eq|close|fail|ne)\b", sol[0]):
            problems.append(f"solution {k} checks nothing (no assert / test_eq / test_close)")
    assert not problems, f"{stem}.ipynb:\n" + "\n".join(problems)


@pytest.mark.parametrize("stem", LESSONS)
def test_run_all_is_safe(stem):
    """Jupyter's Run All ignores nbdev's `#| slow` and `#| eval: false`: such cells, and any download, must do
    nothing unless a switch (RUN_SLOW, DOWNLOAD) is turned on, and the switches start off."""
    problems = []
    for i, (kind, src) in enumerate(cells(stem)):
        if kind != "code": continue
        d = directives(src)
        code = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith("#"))
        risky = "slow" in d or d.get("eval") == "false" or re.search(r"\bdownload_\w+\(|fetch_(emdb|pdb)\(", code)
        if risky and not re.search(rf"^\s*if [^\n]*\b({'|'.join(SWITCHES)})\b", code, re.M):
            problems.append(f"cell {i + 1} is slow or downloads but is not behind `if RUN_SLOW:` / `if DOWNLOAD:`")
        for s in SWITCHES:
            for m in re.finditer(rf"^{s}\s*=\s*(.+)$", code, re.M):
                value = m[1].split("#")[0].strip()
                if value != "False" and "os.environ" not in value:
                    problems.append(f"cell {i + 1}: {s} = {value} (must start off: False or an environment variable)")
    assert not problems, f"{stem}.ipynb:\n" + "\n".join(problems)


def cli_block(stem: str = "20_tutorial_synthetic") -> str:
    "The ```bash block of the lesson's command-line section."
    text = next(src for kind, src in cells(stem) if kind == "markdown" and "from the command line" in src and "```bash" in src)
    return re.search(r"```bash\n(.+?)```", text, re.S)[1]


def test_cli_block_names_every_folder_it_reads():
    "Every folder a command reads (--data, --val, --truth, --probs, --picks, --model's folder) is made by a command before it."
    made, problems = set(), []
    for line in cli_block().strip().splitlines():
        args = dict(re.findall(r"--(data|val|truth|probs|picks|model|out) (\S+)", line))
        for k in ("data", "val", "truth", "probs", "picks", "model"):
            if k in args and not any(args[k] == m or args[k].startswith(m + "/") for m in made):
                problems.append(f"`{line.split(' --')[0]}` reads {args[k]}, which no earlier command makes")
        if "out" in args: made.add(args["out"])
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(os.environ.get("CRYOSEG_SLOW") != "1", reason="runs the CLI pipeline (about 1.5 min): CRYOSEG_SLOW=1")
def test_cli_block_runs_as_written(tmp_path):
    "The lesson's command-line block, run as written in an empty folder, ends with a metrics file."
    script = "set -euo pipefail\n" + cli_block()
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["picking"]["f1"] > 0.5, metrics
