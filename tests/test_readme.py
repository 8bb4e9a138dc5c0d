"""README's "By hand" section works when pasted, line by line, with the shipped seed."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

from .cluster_fixtures import free_port
from .processes import BIN, ServiceProcess

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("strife-balancer", "strife-bank", "strife-gateway")
DEADLINE_S = 60.0


def _by_hand_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("By hand, from the checkout") :]
    section = section[: section.index("The original design's quick start")]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [words for line in lines if (words := shlex.split(line, comments=True))]


def test_by_hand_commands_start_a_cluster_that_pays(tmp_path: Path) -> None:
    commands = _by_hand_commands()
    assert [c[0] for c in commands] == [
        "strife-certs",
        *SERVERS[:2],
        "strife-bank",
        "strife-gateway",
        "strife",
        "strife",
        "strife",
    ]
    # As from the checkout: the same relative paths, with its seed file.
    (Path("deploy")).mkdir()
    shutil.copy(ROOT / "deploy" / "seed.json", Path("deploy") / "seed.json")
    port = str(free_port())  # 7400 may be taken on a shared machine
    commands = [[w.replace(":7400", f":{port}") for w in c] for c in commands]
    env = {**os.environ, "STRIFE_PASSWORD": "pw-alice"}  # what the prompt would take
    with ExitStack() as stack:
        for n, (script, *args) in enumerate(commands):
            if script in SERVERS:
                server = ServiceProcess(script, args, tmp_path / f"{n}-{script}.log").start()
                stack.callback(server.stop)
                continue
            deadline = time.monotonic() + DEADLINE_S
            while True:  # the gateway learns the banks from the balancer's next heartbeat
                done = subprocess.run(
                    [str(BIN / script), *args],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=DEADLINE_S,
                )
                if done.returncode == 0 or time.monotonic() > deadline or args[0] != "login":
                    break
                time.sleep(0.2)
            assert done.returncode == 0, f"{script} {args}: {done.stdout}{done.stderr}"
    assert "987.66" in done.stdout  # alice's balance after paying 12.34 of 1,000.00
    assert Path("certs/client-default/tls.key").exists() and Path("data/alpha.db").exists()
