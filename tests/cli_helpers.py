"Shared by the command-line tests: run `cryoseg` in-process and check its one-line errors."
from cryoseg.cli.main import main


def run(capsys, *argv):
    "main(argv) → (exit code, stdout, stderr); argparse's SystemExit is turned into its code."
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *contains):
    "Exit code 2, one line on stderr starting `cryoseg ... error:`, no traceback, and each of `contains` in it."
    assert rc == 2, (rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cryoseg ") and "error:" in lines[0], lines[0]
    assert "Traceback" not in err
    for c in contains:
        assert c in lines[0], (c, lines[0])
