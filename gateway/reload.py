"""Live reload: the manifest directories are watched, and a change replaces the served registry.

The directories are polled: a stat of each manifest file every `POLL_INTERVAL`
seconds costs microseconds, needs no dependency and sees every way a file can
change (in place, by an editor's rename, on a network file system). A change is
read once the directories have been quiet for `QUIET` seconds, so that a file
still being written is not read half-way. Requests in flight keep the command
they started with; worker pools of a changed or removed command finish what they
hold and stop, and new pools start for the new definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.manifest import Command
from gateway.registry import MANIFEST_SUFFIXES, Registry, load_registry

logger = logging.getLogger("gateway")

POLL_INTERVAL = 0.3
QUIET = 0.3

Snapshot = tuple[tuple[str, int, int, int], ...]


class Reloader:
    """Swaps `state.registry` for a freshly loaded one when the manifests change, or on SIGHUP."""

    def __init__(self, state: Any, environ: Mapping[str, str]) -> None:
        self.state = state  # the app's state: settings, registry, pools
        self.environ = environ
        self.reloads = 0
        self.failures = 0  # manifests found invalid by a reload
        self._lock = asyncio.Lock()
        self._signalled: asyncio.Future[None] | None = None
        self._seen = snapshot(state.settings.manifest_dirs)

    async def watch(self) -> None:
        """Poll until cancelled."""
        directories = self.state.settings.manifest_dirs
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self._retire_orphans()
            current = snapshot(directories)
            if current == self._seen:
                continue
            while (settled := await _after(QUIET, snapshot, directories)) != current:
                current = settled
            await self.reload("the manifests changed")

    async def reload(self, reason: str) -> None:
        async with self._lock:
            self._seen = snapshot(self.state.settings.manifest_dirs)
            old: Registry = self.state.registry
            settings = self.state.settings
            try:
                new = await asyncio.to_thread(
                    load_registry,
                    settings.manifest_dirs,
                    settings.default_timeout,
                    self.environ,
                    old,
                    max_wait=settings.admission.max_wait,
                )
            except NotADirectoryError as exc:
                self.failures += 1
                logger.error("Reload failed, %s; the manifests loaded before are still served.", exc)
                return
            self.state.registry = new
            self.reloads += 1
            self._report(old, new, reason)
            await self._replace_pools(old, new)

    def request_reload(self) -> None:
        """For SIGHUP: reload now, whatever the files' times say."""
        self._signalled = asyncio.ensure_future(self.reload("SIGHUP"))

    def _report(self, old: Registry, new: Registry, reason: str) -> None:
        known = {(failure.path, tuple(failure.problems)) for failure in old.failures}
        for failure in new.failures:
            if (failure.path, tuple(failure.problems)) in known:
                continue
            self.failures += 1
            kept = " Its last good version is still served." if failure.path in new.kept else " It is not served."
            logger.error("%s\n%s", failure, kept.strip())
        added, changed, removed = _differences(old.commands, new.commands)
        logger.info(
            "Reloaded the manifests (%s): %d commands served; added %s; changed %s; removed %s",
            reason,
            len(new.commands),
            _listed(added),
            _listed(changed),
            _listed(removed),
        )

    async def _replace_pools(self, old: Registry, new: Registry) -> None:
        pools = self.state.pools
        retired = pools.retire_unused({command.pool_key for command in new.commands.values()})
        if retired:
            logger.info("Retired %d worker pool(s) of changed or removed commands", retired)
        started = [command for command in new.commands.values() if old.commands.get(command.id) != command]
        await pools.start_eager(started)

    def _retire_orphans(self) -> None:
        # A request that began before a reload may have opened a pool for its command's old definition.
        in_use = {command.pool_key for command in self.state.registry.commands.values()}
        self.state.pools.retire_unused(in_use, idle_only=True)


def snapshot(directories: tuple[Path, ...]) -> Snapshot:
    """Name, modification time, size and inode of every manifest file: any edit or rename changes it."""
    entries: list[tuple[str, int, int, int]] = []
    for directory in directories:
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if not entry.name.endswith(MANIFEST_SUFFIXES) or entry.name.startswith("."):
                        continue
                    with contextlib.suppress(OSError):  # gone since it was listed
                        info = entry.stat()
                        entries.append((entry.path, info.st_mtime_ns, info.st_size, info.st_ino))
        except OSError:
            entries.append((str(directory), -1, -1, -1))  # missing: a change when it comes back
    return tuple(sorted(entries))


async def _after(seconds: float, read: Any, *args: Any) -> Any:
    await asyncio.sleep(seconds)
    return read(*args)


def _differences(old: dict[str, Command], new: dict[str, Command]) -> tuple[list[str], list[str], list[str]]:
    added = sorted(name for name in new if name not in old)
    changed = sorted(name for name in new if name in old and new[name] != old[name])
    removed = sorted(name for name in old if name not in new)
    return added, changed, removed


def _listed(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


@contextlib.contextmanager
def on_sighup(reloader: Reloader) -> Any:
    """SIGHUP reloads, while the app runs in the main thread's loop (a server; not a test client's thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reloader.request_reload)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
