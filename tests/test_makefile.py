"""`make demo` and `make bench` write their reports into a git-ignored folder by default and
touch no tracked file; `OUT=reports` is the explicit way to refresh the committed ones."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report_paths(*make_args: str) -> list[str]:
    """The paths the targets' commands write reports to, from make's dry run."""
    commands = subprocess.run(["make", "-n", *make_args], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=60).stdout
    return re.findall(r"--(?:json|markdown|out) (\S+)", commands)


def test_demo_and_bench_write_only_into_an_ignored_folder():
    paths = report_paths("demo", "bench")
    assert paths == ["out/profile.json", "out/profile.md", "out"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout.split()
    assert ignored == paths
    tracked = subprocess.run(["git", "ls-files", "out"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout
    assert tracked == ""


def test_committed_reports_are_refreshed_only_on_request():
    assert report_paths("bench", "OUT=reports") == ["reports"]
