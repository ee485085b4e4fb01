"""Volume pinning, like SSH known_hosts.

The config MAC cannot stop someone who can write the share from replacing
sealfs.json wholesale with one keyed to a DEK they chose (an RSA KEK wraps with a
public key). So each client remembers, per store location, the volume id and a
fingerprint of the config key on first use, and refuses a volume whose pin changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import ConfigError, PinMismatchError


def default_pin_path() -> Path:
    state = os.environ.get("SEALFS_STATE_DIR")
    if state:
        return Path(state) / "known_volumes.json"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sealfs" / "known_volumes.json"


class PinStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_pin_path()

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pin file {self.path} is unreadable or damaged: {exc}") from None
        except RecursionError:      # json.loads recurses once per nesting level
            raise ConfigError(f"pin file {self.path} is damaged (nested too deeply)") from None
        if not isinstance(data, dict) or not all(isinstance(pin, dict) for pin in data.values()):
            raise ConfigError(f"pin file {self.path} is damaged")
        return data

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def check(self, location: str, volume_id: str, fingerprint: str, record: bool = True) -> bool:
        """Verify the pin for location; on first use record it (unless record=False).
        Returns True if the location had no pin yet."""
        data = self._load()
        pin = data.get(location)
        if pin is None:
            if record:
                data[location] = {"volume_id": volume_id, "fingerprint": fingerprint}
                self._save(data)
            return True
        if pin.get("volume_id") != volume_id or pin.get("fingerprint") != fingerprint:
            raise PinMismatchError(
                f"the volume at {location} is not the one pinned on first use "
                f"(pinned volume {str(pin.get('volume_id', '?'))[:12]}, found {volume_id[:12]}): "
                f"sealfs.json may have been replaced; if the change is legitimate, "
                f"run `sealfs repin {location}`")
        return False

    def forget(self, location: str) -> bool:
        data = self._load()
        if data.pop(location, None) is None:
            return False
        self._save(data)
        return True
