"""``siffs.cli.encrypted``: what the user offered to unlock an image."""

from __future__ import annotations

from siffs.cli.encrypted import BuildChoice, KeyChoice


def test_the_offered_secrets_stay_out_of_the_repr():
    """The choice lands in argparse's namespace, which a debug print or a log line may show."""
    choice = KeyChoice(ask=True, pem_path=None, env_passphrase=b"hunter2", env_pem=b"-----BEGIN PRIVATE")
    for text in (repr(choice), str(choice), repr(BuildChoice("luks2", choice)), str([choice])):
        assert "hunter2" not in text
        assert "PRIVATE" not in text
    assert repr(choice) == "KeyChoice(ask=True, pem_path=None)"
