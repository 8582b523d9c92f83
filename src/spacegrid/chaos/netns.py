"""A network namespace joined to the host by a veth pair, for cutting one PU off from NATS (and healing it): the
chaos suite's network partition. Linux only, as root; everything it creates it deletes, by name."""

from __future__ import annotations

import os
import subprocess  # nosec B404  # iproute2's ip: argv lists, no shell
from dataclasses import dataclass

from spacegrid.errors import ConfigError

COMMAND_TIMEOUT_S = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=check)  # nosec B603 B607  # fixed ip argv, no shell; ip from PATH
    except FileNotFoundError:
        raise ConfigError("the network-cut fault needs iproute2's `ip` command") from None
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"`ip {' '.join(args)}` failed: {exc.stderr.strip()}") from exc


def netns_usable() -> str | None:
    """None if this process can create network namespaces, else why not (to tell the user)."""
    probe = f"sgp{os.getpid() % 1_000_000}"
    try:
        result = _ip("netns", "add", probe, check=False)
    except ConfigError as exc:
        return str(exc)
    if result.returncode != 0:
        return f"can't create a network namespace ({result.stderr.strip()}): run as root on Linux"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class NetNamespace:
    """`ip netns add <name>`, a veth pair <name>h (host, host_ip/30) and <name>n (inside, inner_ip/30). A process
    started with `wrapper` lives inside and reaches the host only through the pair; cut() takes the host side
    down (a pulled cable: packets vanish, connections stall until their keep-alives give up), heal() brings it up."""

    name: str
    subnet: int  # the third octet of 10.213.<subnet>.0/30

    @classmethod
    def for_this_process(cls, index: int = 0) -> NetNamespace:
        pid = os.getpid()
        return cls(f"sgc{pid % 100_000}x{index}", (pid + index) % 250 + 1)

    @property
    def host_ip(self) -> str:
        return f"10.213.{self.subnet}.1"

    @property
    def inner_ip(self) -> str:
        return f"10.213.{self.subnet}.2"

    @property
    def host_link(self) -> str:
        return f"{self.name}h"

    @property
    def wrapper(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        assert len(self.host_link) <= 15, "interface names are at most 15 characters"
        self.destroy()  # a leftover of an earlier run of the same pid
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_link, "type", "veth", "peer", "name", f"{self.name}n")
            _ip("link", "set", f"{self.name}n", "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
            _ip("link", "set", self.host_link, "up")
            _ip("-n", self.name, "addr", "add", f"{self.inner_ip}/30", "dev", f"{self.name}n")
            _ip("-n", self.name, "link", "set", f"{self.name}n", "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except ConfigError:
            self.destroy()
            raise

    def cut(self) -> None:
        _ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_link, "up")

    def destroy(self) -> None:
        """Delete the pair and the namespace if they exist (deleting either end of a veth deletes both)."""
        _ip("link", "del", self.host_link, check=False)
        _ip("netns", "del", self.name, check=False)

    def exists(self) -> bool:
        listed = _ip("netns", "list", check=False).stdout.split()
        return self.name in listed or bool(_ip("link", "show", self.host_link, check=False).stdout)
