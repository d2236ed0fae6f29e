"""Node configuration: one TOML file describes one node (docs/configuration.md).

``load_config(path)`` reads and checks a file and returns a frozen
:class:`NodeConfig`; every mistake is one :class:`ConfigError` (exit status
2) naming the file, the key and what to write instead.  ``dump_effective``
and ``to_dict`` show the result with every default filled in.  Key files are
read (:func:`vmip.config.keyfile.read_key_file`) and checked when the config
loads, and their keys travel in the model (``SaConfig.enc_key``...).  The
model's field metadata is the schema (:mod:`vmip.config.schema`).
"""

from vmip.config.effective import dump_effective, to_dict
from vmip.config.errors import ConfigError
from vmip.config.keyfile import read_key_file, write_key_file
from vmip.config.loader import build_config, load_config, parse_config
from vmip.config.model import (
    Action,
    ControlConfig,
    Direction,
    Driver,
    Endpoint,
    IkeConfig,
    IkePeerConfig,
    KeyMode,
    KeysConfig,
    Lifetime,
    LinkConfig,
    LoggingConfig,
    MobilityConfig,
    Mode,
    NodeConfig,
    NodeSection,
    PeerConfig,
    PolicyConfig,
    Role,
    SaConfig,
    TunConfig,
    TunnelKind,
)

__all__ = [
    "Action", "ConfigError", "ControlConfig", "Direction", "Driver", "Endpoint", "IkeConfig",
    "IkePeerConfig", "KeyMode", "KeysConfig", "Lifetime", "LinkConfig", "LoggingConfig",
    "MobilityConfig", "Mode", "NodeConfig", "NodeSection", "PeerConfig", "PolicyConfig", "Role",
    "SaConfig", "TunConfig", "TunnelKind", "build_config", "dump_effective", "load_config",
    "parse_config", "read_key_file", "to_dict", "write_key_file",
]
