"""Host: API Gateway forwards only its own domain."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")


@dataclass(frozen=True)
class AllowedHosts:
    """Host values the gateway answers: its own names on its own port, plus LOCALGW_ALLOWED_HOSTS
    entries (`name` for any port, `name:port` for one). The functions copy Host into image URLs.

    Its own names without a port are taken too, and completed with its port before the event is
    built: dicomweb-client sends `Host: 127.0.0.1` for http://127.0.0.1:3000 (it sets Host from the
    URL's host alone), and the URLs the functions build from Host must still name the right port.
    """

    with_port: frozenset[str]
    any_port: frozenset[str]
    own_names: frozenset[str] = frozenset()
    port: int = 80

    @classmethod
    def for_address(cls, host: str, port: int, extra: Iterable[str] = ()) -> AllowedHosts:
        names = {*LOCAL_HOSTS, f"[{host}]" if ":" in host else host}
        if host in ("0.0.0.0", "::", ""):
            names.add(socket.gethostname())
        with_port = {f"{name.lower()}:{port}" for name in names}
        if port == 80:
            with_port |= {name.lower() for name in names}
        entries = [e.strip().lower() for e in extra if e.strip()]
        with_port |= {e for e in entries if _HOST.fullmatch(e) and _HOST.fullmatch(e).group(2)}  # type: ignore[union-attr]
        any_port = {e for e in entries if e not in with_port}
        return cls(frozenset(with_port), frozenset(any_port), frozenset(n.lower() for n in names), port)

    def problem(self, values: list[str]) -> str | None:
        """Why these Host header values are refused, or None."""
        if len(values) != 1:
            return "exactly one Host header is required"
        found = _HOST.fullmatch(values[0])
        if found is None or (found.group(2) is not None and not 0 < int(found.group(2)) < 65536):
            return "malformed Host header"
        host = self.completed(values[0]).lower()
        if host not in self.with_port and found.group(1).lower() not in self.any_port:
            return f"this gateway does not serve host {values[0]!r} (see LOCALGW_ALLOWED_HOSTS)"
        return None

    def completed(self, value: str) -> str:
        """A Host value of one of the gateway's own names without a port, with the gateway's port."""
        if value.lower() in self.own_names:
            return f"{value}:{self.port}"
        return value
