"""Egress policy: every URL a client gives is checked here before the server connects to it.

Rules: `http`/`https` only; the host is resolved and every address must be publicly routable
(no private, loopback, link-local, multicast, reserved or unspecified range, IPv4 or IPv6, nor an
IPv4 address embedded in IPv6) unless the operator allows it (`MEDCLOUD_EGRESS_ALLOW_PRIVATE`,
`MEDCLOUD_EGRESS_ALLOWED_NETWORKS`). Downloads connect to the address that was checked (pinned, so a
DNS answer that changes between check and connect cannot redirect them), re-check every redirect
hop, stop at a byte cap and a total deadline. Clients with their own HTTP stack (object storage,
DICOMweb, MLflow) are checked with `check_url` when the URL is given; they resolve the name again
when they connect, so a DNS answer changed on purpose in between (DNS rebinding) is a residual risk
that only a network-level egress filter removes. The DICOMweb and Azure clients follow no redirect;
those of S3-compatible stores, GCS and MLflow are the libraries' own (the same residual risk).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from medcloud.config import Settings
from medcloud.errors import Invalid

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECTS = frozenset({301, 302, 303, 307, 308})
REMOTE_SCHEMES = frozenset({"http", "https"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_MASK = "***"
_CHUNK = 1 << 20


class EgressRefused(Invalid):
    """The server may not connect to this URL (scheme, host list, address range)."""


class DownloadFailed(Invalid):
    """The URL was allowed, but the download failed (status, size, time or network)."""


@dataclass(frozen=True)
class Policy:
    """What a client-given URL may reach; `hosts` (host names, "*" any) narrows it further for bundles."""

    allowed_networks: tuple[Network, ...] = ()
    allow_private: bool = False
    hosts: tuple[str, ...] | None = None
    hosts_hint: str = ""
    max_bytes: int = 2 * 1024**3
    deadline_s: float = 900.0
    max_redirects: int = 5

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        hosts: Iterable[str] | None = None,
        hosts_hint: str = "",
        max_bytes: int | None = None,
    ) -> Policy:
        return cls(
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False) for n in settings.egress_allowed_networks),
            allow_private=settings.egress_allow_private,
            hosts=tuple(h.lower() for h in hosts) if hosts is not None else None,
            hosts_hint=hosts_hint,
            max_bytes=max_bytes if max_bytes is not None else settings.egress_max_bytes,
            deadline_s=settings.egress_deadline_s,
        )

    def host_allowed(self, host: str) -> bool:
        if self.hosts is None or "*" in self.hosts:
            return True
        return any(host == a or host.endswith("." + a) for a in self.hosts)

    def address_allowed(self, ip: IPAddress) -> bool:
        """An operator-allowed network, or publicly routable in every form (IPv4 inside IPv6 included)."""
        if self.allow_private:
            return True
        forms = [ip, *_embedded_ipv4(ip)]
        if any(form in net for form in forms for net in self.allowed_networks if form.version == net.version):
            return True
        return all(_public(form) for form in forms)


@dataclass(frozen=True)
class Target:
    """A checked URL: its parts and the addresses the connection may use."""

    url: str
    parts: SplitResult
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def _public(ip: IPAddress) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_link_local)


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address reaches: mapped (::ffff:a.b.c.d), 6to4, Teredo, NAT64."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [a for a in found if a is not None]


def split_url(url: str, *, what: str = "URL") -> SplitResult:
    """`urlsplit` of the stripped URL, answering `Invalid` (400) for a malformed one (`http://[::1/x`)."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        _ = parts.port  # a port that is not a number in range raises here
    except ValueError:
        raise Invalid(f"The {what} {redact_url(text)} is not a valid URL.") from None
    return parts


def scheme_of(url: str, *, what: str = "URL") -> str:
    """The lower-cased scheme ('' for a path); a one-letter scheme is a Windows drive, hence ''."""
    scheme = split_url(url, what=what).scheme.lower()
    return "" if len(scheme) == 1 else scheme


def resolve(host: str, port: int, *, what: str = "URL") -> tuple[IPAddress, ...]:
    """Every address `host` stands for; legacy numeric forms (`0x7f000001`, `2130706433`) included."""
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-Fx.]+", host):
        try:  # inet_aton reads the forms browsers and libc accept and ip_address does not
            return (ipaddress.IPv4Address(socket.inet_aton(host)),)
        except OSError:
            pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise EgressRefused(f"The {what} host {host} does not resolve.") from None
    return tuple(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))


def check_url(url: str, policy: Policy, *, what: str = "URL") -> Target:
    """Parse, check the scheme and host, resolve, and check every address; `Invalid` naming the reason."""
    parts = split_url(url, what=what)
    shown = redact_url(url)
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise EgressRefused(f"The {what} {shown} is not an http:// or https:// URL.")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise Invalid(f"The {what} {shown} names no host.")
    if not policy.host_allowed(host):
        raise EgressRefused(f"The {what} host {host!r} is not allowed on this server{policy.hosts_hint}.")
    port = parts.port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port, what=what)
    if not addresses or not all(policy.address_allowed(ip) for ip in addresses):
        raise EgressRefused(
            f"The {what} {shown} resolves to a private, loopback, link-local, multicast or reserved address, which "
            "this server does not connect to (an operator can allow networks with MEDCLOUD_EGRESS_ALLOWED_NETWORKS)."
        )
    return Target(url=parts.geturl(), parts=parts, host=host, port=port, addresses=addresses)


def check_urls(urls: Iterable[str], policy: Policy, *, what: str = "URL") -> None:
    for url in urls:
        check_url(url, policy, what=what)


def redact_url(url: str) -> str:
    """The URL with user info, every query value and the fragment replaced by `***` (local paths unchanged)."""
    text = (url or "").strip()
    try:
        parts = urlsplit(text)
    except ValueError:  # malformed: keep what cannot hold a secret
        return re.sub(r"//[^/?#]*@", f"//{_MASK}@", re.split(r"[?#]", text, maxsplit=1)[0])
    if len(parts.scheme) <= 1 or parts.scheme.lower() == "file":
        return text
    netloc = f"{_MASK}@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    query = urlencode([(k, _MASK) for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, _MASK if parts.fragment else ""))


def has_secrets(url: str) -> bool:
    """True when `redact_url` hides something: the full URL must then be stored sealed."""
    text = (url or "").strip()
    return redact_url(text) != text


def download(url: str, dest: Path, policy: Policy, *, what: str = "URL") -> str:
    """GET `url` into `dest` under `policy`; every redirect hop is checked again. Returns the last URL.

    The connection goes to the checked address (the Host header and TLS server name stay the URL's
    host). Larger than `max_bytes`, slower than `deadline_s` in total, or more than `max_redirects`
    hops: `DownloadFailed`, and `dest` is removed.
    """
    deadline = time.monotonic() + policy.deadline_s
    current = url
    try:
        # trust_env=False: a proxy from the environment would connect to the name, not the checked address.
        with httpx.Client(trust_env=False, follow_redirects=False) as client:
            for _hop in range(policy.max_redirects + 1):
                target = check_url(current, policy, what=what)
                resp = _send(client, target, deadline)
                try:
                    location = resp.headers.get("location")
                    if resp.status_code in REDIRECTS and location:
                        current = urljoin(target.url, location.strip())
                        continue
                    if resp.status_code != 200:
                        shown = redact_url(url)
                        raise DownloadFailed(f"Downloading the {what} {shown} answered HTTP {resp.status_code}.")
                    _save(resp, dest, policy, deadline, what=what, shown=redact_url(url))
                    return current
                finally:
                    resp.close()
    except httpx.HTTPError as exc:
        dest.unlink(missing_ok=True)
        raise DownloadFailed(f"Could not download the {what} {redact_url(url)}: {_reason(exc)}.") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    raise DownloadFailed(f"The {what} {redact_url(url)} redirected more than {policy.max_redirects} times.")


def _send(client: httpx.Client, target: Target, deadline: float) -> httpx.Response:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise httpx.TimeoutException("deadline")
    parts, ip = target.parts, target.addresses[0]
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = f"{userinfo}{host}:{parts.port}" if parts.port else f"{userinfo}{host}"
    pinned = urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": target.host} if parts.scheme.lower() == "https" else {}
    request = client.build_request(
        "GET",
        pinned,
        headers={"Host": parts.netloc.rsplit("@", 1)[-1]},
        timeout=httpx.Timeout(min(remaining, 30.0), connect=min(remaining, 10.0)),
        extensions=extensions,
    )
    return client.send(request, stream=True)


def _save(resp: httpx.Response, dest: Path, policy: Policy, deadline: float, *, what: str, shown: str) -> None:
    declared = resp.headers.get("content-length", "")
    too_big = DownloadFailed(f"The {what} {shown} is larger than {policy.max_bytes} bytes.")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise too_big
    size = 0
    with open(dest, "wb") as out:
        for chunk in resp.iter_bytes(_CHUNK):
            size += len(chunk)
            if size > policy.max_bytes:
                raise too_big
            if time.monotonic() > deadline:
                raise DownloadFailed(f"The {what} {shown} did not download within {policy.deadline_s:g} s.")
            out.write(chunk)


def _reason(exc: BaseException) -> str:
    """A short reason without the URL (it may hold a secret, or the address it was pinned to)."""
    if isinstance(exc, httpx.TimeoutException):
        return "it did not answer in time"
    if isinstance(exc, httpx.ConnectError):
        return "the connection failed"
    return type(exc).__name__


class _RedactingFilter(logging.Filter):
    """httpx logs each request's URL at INFO: hide the query and user info of client-given URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_RedactingFilter())
