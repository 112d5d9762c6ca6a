"""Issue 12 item 6: on a terminal the progress line is redrawn while anything is going on.

The backup runs with its stderr on a real pseudo-terminal; this side notes
when each redraw arrives.  The data compresses (so it is not stored raw) but
slowly at xz:9, so most of the run is the write queue draining after the
last file was read: the part that used to show nothing.
"""

import os
import pty
import random
import re
import subprocess

import helpers


def test_progress_is_redrawn_every_second_through_the_final_drain(savedir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"small file\n")
    (src / "big.txt").write_bytes(helpers.costly_text(random.Random(18), 4 * 1024 * 1024))
    master, slave = pty.openpty()
    proc = subprocess.Popen(helpers.BACKSHIFT + ["--save-directory", savedir, "--backup",
                                                 "--subset", "tty", "--compression", "xz:9",
                                                 "--no-fsync"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=slave,
                            cwd=str(tmp_path))
    os.close(slave)
    proc.stdin.write(helpers.find_print0("src", str(tmp_path)))
    proc.stdin.close()
    arrivals = helpers.read_terminal(master)
    assert proc.wait(timeout=120) == 0
    shown = b"".join(data for _when, data in arrivals)
    # A redraw is a carriage return not followed by the terminal's newline.
    redraws = [when for when, data in arrivals if re.search(rb"\r(?!\n)", data)]
    ends = [when for when, data in arrivals if b"; backup " in data]
    assert len(redraws) >= 2 and ends, shown
    moments = redraws + ends[-1:]
    gaps = [later - earlier for earlier, later in zip(moments, moments[1:])]
    assert max(gaps) < 1.5, (gaps, shown)
    # While the queue drains the line says what it waits for, and counts it in the ETA.
    assert b"waiting to be compressed and written" in shown, shown
    assert re.search(rb"ETA \d+:\d\d:\d\d", shown), shown
    # One summary line, ending with the new backup's id.
    backup_id, = helpers.list_ids(savedir)
    last = shown.decode().replace("\r\n", "\n").split("\n")[-2]
    assert re.fullmatch(r"backshift: 2 files, 4\.0 MiB read, [\d.]+ (B|KiB|MiB) added, "
                        r"\d:\d\d:\d\d elapsed; backup " + re.escape(backup_id), last), last
