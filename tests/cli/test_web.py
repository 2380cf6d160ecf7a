"""`jobgraph token` and `jobgraph web` through the real command: tokens shown once and stored hashed; a server
off loopback refused without a token; a real server over TCP that leaves nothing behind when stopped."""

from __future__ import annotations

from pathlib import Path

from jobgraph.store import Store
from jobgraph.store.tokens import Tokens, token_hash
from tests.conftest import Cli, store_url


def test_a_token_is_printed_once_and_stored_only_hashed(cli: Cli, tmp_path: Path) -> None:
    made = cli("token", "create", "ci-bot", "--scope", "operate", "--expires", "30", check=0)
    secret = made.stdout.strip()
    assert secret.startswith("jg_") and len(secret.splitlines()) == 1
    assert "shown this once" in made.stderr and "ci-bot (operate, expires" in made.stderr
    listed = cli("token", "list", check=0)
    assert "ci-bot" in listed.stdout and "operate" in listed.stdout and "live" in listed.stdout
    assert secret not in listed.stdout + listed.stderr
    with Store(store_url(tmp_path)) as records:
        (info,) = Tokens(records).all()
        assert info.expires_at is not None and (info.expires_at - info.created_at).days == 30
    database = tmp_path / ".jobgraph" / "jobgraph.db"
    raw = b"".join(path.read_bytes() for path in database.parent.glob("jobgraph.db*"))
    assert secret.encode() not in raw and token_hash(secret).encode() in raw
    assert cli("token", "revoke", "ci-bot", check=0).stdout.startswith("revoked 1 token")
    assert "revoked" in cli("token", "list", check=0).stdout


def test_bad_token_commands_exit_2_with_a_clear_error(cli: Cli) -> None:
    again = cli("token", "revoke", "nobody", check=2)
    assert "no unrevoked token named 'nobody'" in again.stderr and "Traceback" not in again.stderr
    assert "'root'" in cli("token", "create", "x", "--scope", "root", check=2).stderr
    assert "--expires must be at least 1 day" in cli("token", "create", "x", "--scope", "read", "--expires", "0",
                                                      check=2).stderr
    cli("token", "create", "dup", "--scope", "read", check=0)
    assert "a live token named 'dup' exists already" in cli("token", "create", "dup", "--scope", "read",
                                                            check=2).stderr


def test_web_off_loopback_is_refused_without_a_live_token(cli: Cli) -> None:
    refused = cli("web", "--host", "0.0.0.0", "--port", "0", check=2, timeout=30)
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "jobgraph token create" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    cli("token", "create", "old", "--scope", "read", check=0)
    cli("token", "revoke", "old", check=0)
    assert "refusing to listen" in cli("web", "--host", "0.0.0.0", "--port", "0", check=2, timeout=30).stderr
