"""Session cookies and CSRF tokens: sealed, bound to one session, unforgeable, expiring."""

from __future__ import annotations

import pytest
from lorafleet.controlplane.dashboard.session import SessionConfig, SessionSealer


@pytest.fixture
def sealer() -> SessionSealer:
    return SessionSealer(SessionConfig(secret_key="unit-test-key"))


def test_sealed_session_opens_to_the_same_token_and_namespace(sealer: SessionSealer) -> None:
    session = sealer.new_session(token="lf_secret", namespace="alice")
    opened = sealer.open(sealer.seal(session))
    assert opened == session


def test_cookie_value_does_not_reveal_the_api_token(sealer: SessionSealer) -> None:
    cookie = sealer.seal(sealer.new_session(token="lf_very_secret_token", namespace="alice"))
    assert "lf_very_secret_token" not in cookie
    assert "alice" not in cookie


@pytest.mark.parametrize("value", [None, "", "garbage", "gAAAAABnot-a-real-fernet-token=="])
def test_missing_or_garbage_cookie_opens_to_no_session(sealer: SessionSealer, value: str | None) -> None:
    assert sealer.open(value) is None


def test_tampered_cookie_is_refused(sealer: SessionSealer) -> None:
    cookie = sealer.seal(sealer.new_session(token="lf_x", namespace="alice"))
    flipped = cookie[:-6] + ("A" if cookie[-6] != "A" else "B") + cookie[-5:]
    assert sealer.open(flipped) is None


def test_cookie_sealed_with_another_secret_key_is_refused(sealer: SessionSealer) -> None:
    other = SessionSealer(SessionConfig(secret_key="another-key"))
    cookie = other.seal(other.new_session(token="lf_x", namespace="mallory"))
    assert sealer.open(cookie) is None


def test_session_expires_after_max_age() -> None:
    now = [1_700_000_000.0]
    sealer = SessionSealer(SessionConfig(secret_key="k", max_age_s=60), clock=lambda: now[0])
    cookie = sealer.seal(sealer.new_session(token="lf_x", namespace="alice"))
    now[0] += 60  # Fernet timestamps have one-second resolution: still valid at exactly max_age
    assert sealer.open(cookie) is not None
    now[0] += 1
    assert sealer.open(cookie) is None


def test_csrf_token_is_bound_to_its_session(sealer: SessionSealer) -> None:
    mine = sealer.new_session(token="lf_x", namespace="alice")
    theirs = sealer.new_session(token="lf_x", namespace="alice")
    token = sealer.csrf_token(mine)
    assert sealer.csrf_ok(mine, token)
    assert not sealer.csrf_ok(theirs, token)
    assert not sealer.csrf_ok(mine, None)
    assert not sealer.csrf_ok(mine, "")
    assert not sealer.csrf_ok(mine, token[:-1] + ("x" if token[-1] != "x" else "y"))


def test_csrf_token_survives_resealing_the_same_session(sealer: SessionSealer) -> None:
    session = sealer.new_session(token="lf_x", namespace="alice")
    reopened = sealer.open(sealer.seal(session))
    assert reopened is not None
    assert sealer.csrf_ok(reopened, sealer.csrf_token(session))


def test_cookie_is_httponly_and_samesite_strict(sealer: SessionSealer) -> None:
    options = sealer.cookie_options()
    assert options["httponly"] is True
    assert options["samesite"] == "strict"
    assert options["path"] == "/dashboard"


def test_empty_secret_key_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="SECRET_KEY"):
        SessionSealer(SessionConfig(secret_key=""))


def test_session_key_comes_from_the_secret_key_or_the_generated_key_file(tmp_path) -> None:
    from lorafleet.controlplane.dashboard.web import _secret_key_material
    from lorafleet.controlplane.settings import Settings

    generated = Settings(home=tmp_path, secret_key=None)
    first = _secret_key_material(generated)
    assert first == _secret_key_material(Settings(home=tmp_path, secret_key=None))  # survives restarts
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    assert _secret_key_material(Settings(home=tmp_path, secret_key="from-env")) == "from-env"
    # A cookie sealed before a restart opens after it.
    before = SessionSealer(SessionConfig(secret_key=first))
    after = SessionSealer(SessionConfig(secret_key=_secret_key_material(generated)))
    assert after.open(before.seal(before.new_session(token="lf_x", namespace="alice"))) is not None
