"""The node config (peerdb/node/config.py) as the README documents it: what a field may be
left out, what each accepts, and that every refusal names the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import exitcodes
from cli.main import main
from peerdb.core.errors import ConfigError
from peerdb.node.config import load_node_config
from peerdb.setup_files import init_consortium


def config_with_api(tmp_path: Path, api_table: str) -> Path:
    """firm-a's config from `consortium init`, its [api] table replaced by ``api_table``."""
    init_consortium(tmp_path / "c", "cfg", ["firm-a"], sync=False)
    path = tmp_path / "c" / "firm-a.toml"
    text = path.read_text()
    head = text[:text.index("[api]")]
    path.write_text(head + api_table)
    return path


def test_api_listen_left_out_is_loopback_on_any_free_port(tmp_path: Path) -> None:
    cfg = load_node_config(config_with_api(tmp_path, '[api]\ntoken = "' + "t" * 20 + '"\n'))
    assert cfg.api_listen == "127.0.0.1:0"


def test_api_listen_port_0_means_any_free_port(tmp_path: Path) -> None:
    cfg = load_node_config(config_with_api(tmp_path, '[api]\nlisten = "127.0.0.1:0"\ntoken = "' + "t" * 20 + '"\n'))
    assert cfg.api_listen == "127.0.0.1:0"


@pytest.mark.parametrize("listen", ["127.0.0.1:65536", "127.0.0.1:x", ":8080", "127.0.0.1"])
def test_api_listen_that_is_not_an_address_is_refused_by_name(tmp_path: Path, listen: str) -> None:
    path = config_with_api(tmp_path, f'[api]\nlisten = "{listen}"\ntoken = "' + "t" * 20 + '"\n')
    with pytest.raises(ConfigError, match="api.listen"):
        load_node_config(path)


def test_the_cli_cannot_guess_a_port_0_api_and_says_what_to_do(tmp_path: Path) -> None:
    path = config_with_api(tmp_path, '[api]\ntoken = "' + "t" * 20 + '"\n')
    result = CliRunner().invoke(main, ["-c", str(path), "status"])
    assert result.exit_code == exitcodes.CONFIG
    assert "any free port" in result.output and "--api HOST:PORT" in result.output


def test_the_auditor_token_must_differ_from_the_application_token(tmp_path: Path) -> None:
    token = "t" * 20
    path = config_with_api(tmp_path, f'[api]\ntoken = "{token}"\naudit_token = "{token}"\n')
    with pytest.raises(ConfigError, match="api.audit_token must differ from api.token"):
        load_node_config(path)


def test_the_auditor_token_may_come_from_a_file_and_is_optional(tmp_path: Path) -> None:
    path = config_with_api(tmp_path, '[api]\ntoken = "' + "t" * 20 + '"\naudit_token_file = "audit.token"\n')
    (path.parent / "audit.token").write_text("a" * 24 + "\n")
    assert load_node_config(path).api_audit_token == "a" * 24
    path.write_text(path.read_text().replace('audit_token_file = "audit.token"\n', ""))
    assert load_node_config(path).api_audit_token is None


def test_audit_export_from_a_config_without_an_auditor_token_says_what_to_set(tmp_path: Path) -> None:
    path = config_with_api(tmp_path, '[api]\nlisten = "127.0.0.1:9"\ntoken = "' + "t" * 20 + '"\n')
    result = CliRunner().invoke(main, ["-c", str(path), "audit", "export", "--out", str(tmp_path / "b.pdbaudit")])
    assert result.exit_code == exitcodes.CONFIG and "api.audit_token" in result.output


def test_net_idle_timeout_defaults_to_the_network_default_and_sets_the_ping_interval(tmp_path: Path) -> None:
    token_table = '[api]\ntoken = "' + "t" * 20 + '"\n'
    default = load_node_config(config_with_api(tmp_path, token_table)).net_config()
    assert (default.idle_timeout, default.ping_interval) == (20.0, 5.0)
    path = config_with_api(tmp_path / "b", token_table + "[net]\nidle_timeout_s = 3\n")
    short = load_node_config(path).net_config()
    assert (short.idle_timeout, short.ping_interval) == (3.0, 0.75)


@pytest.mark.parametrize("table", ["[net]\nidle_timeout_s = 0.5\n", "[net]\nidle_timeout_s = true\n",
                                   '[net]\nidle_timeout_s = "3"\n', "[net]\nping = 1\n"])
def test_a_net_table_out_of_range_or_with_unknown_fields_is_refused_by_name(tmp_path: Path, table: str) -> None:
    path = config_with_api(tmp_path, '[api]\ntoken = "' + "t" * 20 + '"\n' + table)
    with pytest.raises(ConfigError, match=r"\[net\]|net\.idle_timeout_s"):
        load_node_config(path)
