from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pib.artifacts import signing
from pib.errors import PibError, Reason, VerifyError


def test_generate_load_sign_verify(tmp_path: Path) -> None:
    pub = signing.generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    signer = signing.load_signer(tmp_path / "k")
    assert signer.public == pub == signing.load_public_key(tmp_path / "k.pub")
    assert signer.key_id == pub.id and len(pub.id) == 16
    sig = signer.sign(b"meta")
    assert signing.verify(b"meta", sig, [pub]) == pub
    # the key text itself (as an env var would hold it) loads too
    value = (tmp_path / "k").read_text()
    assert signing.load_signer(value).public == pub


def test_wrong_data_key_or_garbage_fails(tmp_path: Path) -> None:
    pub = signing.generate_keypair(tmp_path / "a", tmp_path / "a.pub")
    other = signing.generate_keypair(tmp_path / "b", tmp_path / "b.pub")
    sig = signing.load_signer(tmp_path / "a").sign(b"meta")
    for data, s, keys in [(b"metA", sig, [pub]), (b"meta", sig, [other]), (b"meta", "!!", [pub]), (b"meta", sig, [])]:
        with pytest.raises(VerifyError) as exc:
            signing.verify(data, s, keys)
        assert exc.value.reason is Reason.VERIFY
    assert signing.verify(b"meta", sig, [other, pub]) == pub


def test_refuses_overwrite_and_bad_files(tmp_path: Path) -> None:
    signing.generate_keypair(tmp_path / "a", tmp_path / "a.pub")
    with pytest.raises(PibError) as exc:
        signing.generate_keypair(tmp_path / "a", tmp_path / "a2.pub")
    assert exc.value.reason is Reason.USAGE
    (tmp_path / "bad").write_text("pib-ed25519-private:AAAA\n")
    for path in [tmp_path / "bad", tmp_path / "missing", tmp_path / "a.pub"]:
        with pytest.raises(PibError) as exc:
            signing.load_signer(path)
        assert exc.value.reason is Reason.CONFIG
