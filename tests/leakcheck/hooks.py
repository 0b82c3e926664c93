"""Record every secret Accord mints or is handed, where it does so (not in each test).

- `secrets.token_urlsafe` / `token_hex` called from an `accord.*` module: API, gateway
  connection and SCIM tokens, web session cookies and CSRF tokens, OIDC state, provisioned
  passwords (the kind is named after the calling module);
- `accord.settings.Secret(...)`: database URLs (their password), ACCORD_TOKEN, the Slack
  signing secret, SMTP passwords, Slack tokens, webhook and Slack webhook URLs (an http(s)
  URL in a Secret is a credential as a whole);
- `SecretBox`: its key, every secret it seals, every password it derives;
- `WebhookChannel`: its HMAC signing secret.

`install(record)` patches what is imported already and the rest as it is imported, so a
subprocess (through ../site/sitecustomize.py) pays for nothing it does not load.
No pytest here: subprocesses import this module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import secrets as _secrets
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

Record = Callable[[str, str], None]  # (secret, kind)

MINTED_BY = {
    "accord.identity.service": "API token",
    "accord.identity.sessions": "web session cookie or CSRF token",
    "accord.gateway.tokens": "gateway connection token",
    "accord.directory.tokens": "SCIM token",
    "accord.provisioning.postgres": "provisioned PostgreSQL password",
    "accord.provisioning.mariadb": "provisioned MariaDB password",
    "accord.web.oidc": "OIDC state, nonce or PKCE verifier",
    "accord.web.pages": "pre-login CSRF token",
}

_installed: list[Record] = []


def _record(secret: str, kind: str) -> None:
    for record in _installed:
        record(secret, kind)


def _minted(name: str) -> Callable[..., str]:
    original = getattr(_secrets, name)

    def mint(*args: Any, **kw: Any) -> str:
        value: str = original(*args, **kw)
        module = sys._getframe(1).f_globals.get("__name__", "")
        if module.startswith("accord."):
            _record(value, MINTED_BY.get(module, f"random secret minted in {module}"))
        return value

    mint.__wrapped__ = original  # type: ignore[attr-defined]
    return mint


def secret_value(value: str) -> list[tuple[str, str]]:
    """What of a `Secret`'s value is secret: a URL's password (raw and unquoted), or an
    http(s) URL as a whole (webhooks carry their credential in the path), or the value."""
    if "://" not in value:
        return [(value, "secret setting")]
    try:
        parts = urlsplit(value)
    except ValueError:
        return [(value, "secret setting")]
    if parts.scheme in ("http", "https"):
        return [(value, "secret URL (webhook)")]
    password = parts.password
    if not password:
        return []
    return [(password, "password in a database URL"),
            (unquote(password), "password in a database URL")]


def _patch_settings(module: ModuleType) -> None:
    cls = module.Secret
    original = cls.__init__

    def __init__(self: Any, value: str) -> None:
        original(self, value)
        if isinstance(value, str):
            for secret, kind in secret_value(value):
                _record(secret, kind)

    cls.__init__ = __init__


def _patch_secretbox(module: ModuleType) -> None:
    cls = module.SecretBox
    init, seal, derive = cls.__init__, cls.seal, cls.derive

    def __init__(self: Any, key: bytes) -> None:
        init(self, key)
        _record(key.decode(errors="replace"), "secrets key (SecretBox)")

    def seal_(self: Any, secret: str) -> bytes:
        _record(secret, "secret sealed in the SecretBox (one-time password)")
        box: bytes = seal(self, secret)
        return box

    def derive_(self: Any, purpose: str) -> str:
        value: str = derive(self, purpose)
        _record(value, "derived password (SecretBox.derive)")
        return value

    cls.__init__, cls.seal, cls.derive = __init__, seal_, derive_


def _patch_channels(module: ModuleType) -> None:
    cls = module.WebhookChannel
    original = cls.__init__

    def __init__(self: Any, url: str, secret: bytes, *args: Any, **kw: Any) -> None:
        original(self, url, secret, *args, **kw)
        _record(secret.decode(errors="replace"), "webhook signing secret")

    cls.__init__ = __init__


PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "accord.settings": _patch_settings,
    "accord.provisioning.secrets": _patch_secretbox,
    "accord.notify.channels": _patch_channels,
}


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, patch: Callable[[ModuleType], None]) -> None:
        self.inner, self.patch = inner, patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        self.patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the modules of PATCHES as they are first imported."""

    accord_leakcheck = True  # another copy of this finder (a subprocess's) is skipped

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        patch = PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if getattr(finder, "accord_leakcheck", False) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, patch)
                return spec
        return None


def install(record: Record) -> None:
    """Call `record(secret, kind)` for every secret from now on (once per process)."""
    _installed.append(record)
    if len(_installed) > 1:
        return
    for name in ("token_urlsafe", "token_hex"):
        setattr(_secrets, name, _minted(name))
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _Finder())
