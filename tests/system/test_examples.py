"""The examples in examples/ run, as a user would run them, against a real local consortium.

One four-member consortium (real ``peerdb node run`` processes, TLS, LMDB, no Bitcoin) serves
every test in this module. Its consortium file is given one namespace rule per firm
(``chain.<firm>`` writable only by that firm) before the nodes start, as a founding contract
would, so that the supply-chain example can show a forged write being refused.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdb.localnet import LocalConsortium
from peerdb.setup_files import init_consortium

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT_S = 120.0
"""Upper bound for one example run; they take a few seconds (this catches a hang, not slowness)."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def consortium_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("examples") / "c"
    net = LocalConsortium(directory, params={"heartbeat_ms": 200, "turn_timeout_ms": 1000})
    net.write_files()
    with open(directory / "consortium.toml", "a", encoding="utf-8") as f:
        for name in net.nodes:
            f.write(f'\n[[namespaces]]\nname = "chain.{name}"\nwriters = ["{name}"]\n')
    with net:
        net.start_all()
        net.wait_ready()
        yield directory


def run_example(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, cwd=EXAMPLES.parent)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_accounting_books_one_version_per_period(consortium_dir: Path) -> None:
    result = run_example("accounting_books.py", "--dir", str(consortium_dir), "--periods", "2025-Q1,2025-Q2")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert "2025-Q1: committed books_sha256" in out and "-> unanimous_signed at height" in out
    assert "firm-c and firm-d agree; exactly one version" in out
    assert "written by firm-a, block signed by 4/4 members" in out
    assert "books re-hash to the committed digest: yes" in out
    assert "cannot be accused of keeping two sets of books" in out

    again = run_example("accounting_books.py", "--dir", str(consortium_dir), "--periods", "2025-Q1,2025-Q2")
    assert again.returncode == 0, explain(again)
    assert "2025-Q1: already committed" in again.stdout


def test_accounting_books_audit_catches_a_rewritten_period(consortium_dir: Path) -> None:
    result = run_example("accounting_books.py", "--dir", str(consortium_dir), "--firm", "firm-b",
                         "--periods", "2025-Q1,2025-Q2", "--rewrite", "2025-Q2")
    assert result.returncode == 4, explain(result)
    assert "firm-b REWRITES the closed period" in result.stdout
    assert "AUDIT FAILED" in result.stdout
    assert "2025-Q2: 2 versions in the history" in result.stdout
    assert "2025-Q1: firm-c and firm-d agree; exactly one version" in result.stdout


def test_supply_chain_reads_custody_and_refuses_a_forged_write(consortium_dir: Path) -> None:
    result = run_example("supply_chain.py", "--dir", str(consortium_dir), "--shipment", "shp-test-1")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert "namespace rules for chain.*: chain.firm-a, chain.firm-b, chain.firm-c, chain.firm-d" in out
    for firm in ("firm-a", "firm-b", "firm-c", "firm-d"):
        assert f"chain.{firm}/shp-test-1:" in out and f"by {firm}; links to the previous record: yes" in out
    assert "REFUSED by firm-b's own node" in out
    assert "firm-b may not write namespace 'chain.firm-a'" in out
    assert "Chain of custody verified: 4 records" in out


def test_exposure_registry_flags_the_planted_concentration(consortium_dir: Path) -> None:
    result = run_example("exposure_registry.py", "--dir", str(consortium_dir), "--as-of", "2025-12-31")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert "banks firm-a, firm-b, firm-c; regulator firm-d" in out
    assert "firm-d (regulator) reads the registry at the unanimous_signed view" in out
    assert "21 entries, each signed by the bank it concerns" in out
    assert "FLAG firm-b: acme-industrial is" in out
    assert "1 concentration flag(s) over 25%" in out


def test_payment_feed_streams_payments_the_payee_reads_back(consortium_dir: Path) -> None:
    result = run_example("payment_feed.py", "--dir", str(consortium_dir), "--payments", "600")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert "firm-a streams 600 payments to firm-b through its own node" in out
    assert "600/600 in the majority view" in out and "back-pressure:" in out
    assert "firm-b reads 20/20 sampled payments from its own node at majority: exactly what firm-a wrote" in out


def test_examples_say_when_no_node_answers(tmp_path: Path) -> None:
    init_consortium(tmp_path, "stopped", ["firm-a", "firm-b"], base_port=1, api_base_port=9)
    result = run_example("exposure_registry.py", "--dir", str(tmp_path))
    assert result.returncode == 3, explain(result)
    assert "cannot reach firm-a's node" in result.stderr
    stream = run_example("payment_feed.py", "--dir", str(tmp_path))
    assert stream.returncode == 3, explain(stream)
    assert "cannot reach firm-a's node" in stream.stderr

    missing = run_example("supply_chain.py", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1, explain(missing)
    assert "consortium file not found" in missing.stderr


def test_supply_chain_without_rules_says_so_and_forges_nothing(tmp_path: Path) -> None:
    with LocalConsortium(tmp_path / "c", members=2, params={"heartbeat_ms": 200, "turn_timeout_ms": 1000}) as net:
        net.write_files()
        net.start_all()
        net.wait_ready()
        result = run_example("supply_chain.py", "--dir", str(tmp_path / "c"), "--shipment", "shp-open")
        with net.nodes["firm-a"].client() as client:
            versions = client.get("/v1/history/chain.firm-a/shp-open").json()["versions"]
    assert result.returncode == 0, explain(result)
    assert "namespace rules for chain.*: none" in result.stdout
    assert "NOTE: consortium.toml has no rule for it" in result.stdout
    assert "Nothing attempted" in result.stdout
    assert "Chain of custody verified: 2 records" in result.stdout
    assert len(versions) == 1, versions


@pytest.mark.parametrize("script", ["accounting_books.py", "supply_chain.py", "exposure_registry.py",
                                    "payment_feed.py"])
def test_every_example_is_a_click_command_on_the_client_library(script: str) -> None:
    """The examples are written as the `peerdb` command is: click for the command line, and
    PeerDB's client library (peerdb.client) for the API, never hand-rolled HTTP."""
    result = run_example(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"Usage: {script} [OPTIONS]"), explain(result)
    assert "--dir CONSORTIUM_DIR" in result.stdout and "Example:" in result.stdout
    sources = [(EXAMPLES / name).read_text() for name in (script, "consortium_client.py")]
    assert all("argparse" not in text and "import httpx" not in text for text in sources)
    assert "from peerdb.client import" in sources[1]
