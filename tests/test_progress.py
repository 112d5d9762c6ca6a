"""Issue 4 items 4 and 5: progress reports, streaming without them, bin/randomize."""

import os
import pty
import re
import subprocess
import time

from helpers import (BACKSHIFT, RANDOMIZE, assert_same_tree, extract, find_print0, list_ids,
                     produce_tar, read_record, read_terminal, run, wait_until)


def make_tree(top: str, files: int = 200) -> None:
    os.makedirs(os.path.join(top, "sub"))
    for n in range(files):
        with open(os.path.join(top, "sub" if n % 3 else "", "f%03d" % n), "wb") as handle:
            handle.write(os.urandom(50 + 400 * n))


def test_full_progress_report_on_request(savedir, tmp_path):
    make_tree(str(tmp_path / "src"))
    result = run(["--save-directory", savedir, "--backup", "--subset", "p", "--no-fsync",
                  "--progress-report", "full"], input=find_print0("src", cwd=str(tmp_path)),
                 cwd=str(tmp_path))
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "202 paths to back up" in err  # the list was read first
    last = err.split("\r")[-1]
    assert re.search(r"100\.0%", last), err
    assert "202/202 files" in last and "ETA 0:00:00" in last and "/s" in last
    assert result.stdout == b""


def test_progress_by_default_on_a_terminal_only(savedir, tmp_path):
    make_tree(str(tmp_path / "src"))
    paths = find_print0("src", cwd=str(tmp_path))
    # No terminal (cron): nothing at all on stderr.
    quiet = run(["--save-directory", savedir, "--backup", "--subset", "p"], input=paths,
                cwd=str(tmp_path))
    assert quiet.returncode == 0 and quiet.stderr == b""
    # stderr a real terminal: the full report, percent and ETA, redrawn in place.
    master, slave = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(BACKSHIFT + ["--save-directory", savedir, "--backup", "--subset",
                                         "tty"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=slave, cwd=str(tmp_path))
    os.close(slave)
    proc.stdin.write(paths)
    proc.stdin.close()
    shown = b"".join(data for _when, data in read_terminal(master, timeout=60))
    assert proc.wait(timeout=60) == 0
    elapsed = time.monotonic() - started
    assert b"paths to back up" in shown and b"%" in shown and b"ETA" in shown, shown
    # Redrawn in place, at most a few times a second (the terminal turns
    # each newline into "\r\n": those are not redraws).
    redraws = len(re.findall(rb"\r(?!\n)", shown))
    assert 1 <= redraws <= 4 * elapsed + 2, (redraws, elapsed, shown)


def test_no_stats_streams_paths_as_they_arrive(savedir, tmp_path):
    # With --no-stats a path is backed up (and checkpointed) while find is
    # still running: the path list is never held whole.  (A bounded
    # read-ahead of a few hundred paths is allowed; the input here is
    # longer than that and stays open.)
    make_tree(str(tmp_path / "src"), files=600)
    proc = subprocess.Popen(BACKSHIFT + ["--save-directory", savedir, "--backup", "--subset",
                                         "stream", "--no-stats", "--no-fsync",
                                         "--checkpoint-interval", "0.05"],
                            cwd=str(tmp_path), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # A find that is not done: many paths, a pause, one more, input open.
        top_files = [b"src/f%03d" % n for n in range(0, 600, 3)]
        for path in [b"src"] + top_files + [b"src/sub"]:
            proc.stdin.write(path + b"\0")
            proc.stdin.flush()
        proc.stdin.write(b"src/sub/f001\0")
        proc.stdin.flush()

        def files() -> int:
            ids = list_ids(savedir)
            return read_record(savedir, ids[0])["files"] if ids else 0
        wait_until(lambda: files() >= 2, timeout=10, what="paths handled as they arrived")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def test_randomize_nul_and_newline(tmp_path):
    items = [b"item %d" % n for n in range(500)] + [b"with\nnewline", b"bad\xffbyte"]
    nul = subprocess.run(RANDOMIZE + ["-0"], input=b"".join(i + b"\0" for i in items),
                         stdout=subprocess.PIPE, check=True).stdout
    shuffled = nul.split(b"\0")
    assert shuffled.pop() == b""
    assert sorted(shuffled) == sorted(items) and shuffled != items
    lines = [b"line %d" % n for n in range(500)]
    out = subprocess.run(RANDOMIZE, input=b"\n".join(lines) + b"\n",
                         stdout=subprocess.PIPE, check=True).stdout
    shuffled = out.split(b"\n")
    assert shuffled.pop() == b""
    assert sorted(shuffled) == sorted(lines) and shuffled != lines


def test_randomize_between_find_and_backshift(savedir, tmp_path):
    # find -print0 | randomize -0 | backshift: out of order, still a whole backup.
    top = str(tmp_path / "src")
    make_tree(top)
    os.makedirs(os.path.join(top, "sub", "new\nline dir"))
    with open(os.path.join(top, "sub", "new\nline dir", "x"), "wb") as handle:
        handle.write(b"x")
    shuffled = subprocess.run(RANDOMIZE + ["-0"], input=find_print0("src", cwd=str(tmp_path)),
                              stdout=subprocess.PIPE, check=True).stdout
    result = run(["--save-directory", savedir, "--backup", "--subset", "r", "--no-fsync"],
                 input=shuffled, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, list_ids(savedir)[0]), dest)
    assert_same_tree(top, os.path.join(dest, "src"), dir_mtimes=False)
