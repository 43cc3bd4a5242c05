"""The fleet demo (`./dev demo --fleet`): its check mode starts Redis, the collectors, two Envoy
nodes and the round-robin front, logs a user in through the front, and the node that did not
serve the login counts that user."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from hosts.envoy import REPO

TIMEOUT = 180


def test_demo_check_counts_a_login_on_the_other_node(_artifact_dir: Path):
    log = _artifact_dir / "fleet-demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "envoy" / "run_demo.py"), "--fleet", "--check"],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the demo stops what it started
            proc.wait(timeout=30)
            raise AssertionError(f"the fleet demo's check did not finish in {TIMEOUT}s:\n{log.read_text()}")
        finally:
            try:  # nothing the demo started may outlive the test
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    assert code == 0, f"the fleet demo's check exited with {code}:\n{text[-5000:]}"
    m = re.search(r"^check result: (\{.*\})$", text, re.M)
    assert m, text[-5000:]
    result = json.loads(m.group(1))
    assert result["passed"] and result["login_node"] != result["read_node"], result
    assert (result["status"], result["active_users"], result["users"]) == (200, 1, ["student1"]), result
    assert "check passed" in text and "fleet demo stopped" in text, text[-5000:]
