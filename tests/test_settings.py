"""Settings and load_settings: defaults, then config.ini, then the environment; errors name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import server
from server import DEV_API_KEY, DEV_API_SECRET, Settings, SettingsError, load_settings, make_app

SECRET = "a-long-secret-that-must-never-leak-0123456789"
KEYS = {"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": SECRET}


@pytest.fixture
def config(tmp_path):
    """Write a config.ini and return its path."""

    def write(text, *, encoding="utf-8") -> str:
        path = tmp_path / "config.ini"
        path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
        return str(path)

    return write


FULL_CONFIG = f"""
[server]
host = 127.0.0.1
port = 7000
max_connections = 8
idle_timeout = 2.5
request_timeout = 4

[livekit]
url = wss://lk.example.com
api_key = APIconfig
api_secret = {SECRET}

[tokens]
ttl = 600
client_fields = participant_name, room_config

[cors]
allowed_origins = https://a.example https://b.example:8443
"""


# --------------------------------------------------------------------------
# Sources and precedence


def test_defaults_are_development_mode():
    settings = load_settings({})
    assert settings.dev_mode is True
    assert (settings.api_key, settings.api_secret) == (DEV_API_KEY, DEV_API_SECRET) == ("devkey", "secret")
    assert settings.livekit_url == "ws://localhost:7880"
    assert (settings.host, settings.port) == ("0.0.0.0", 6080)
    assert settings.token_ttl == 900
    assert settings.client_fields == frozenset({"participant_name"})
    assert settings.allowed_origins == frozenset({"*"})
    assert settings.max_connections == 64
    assert (settings.idle_timeout, settings.request_timeout) == (5.0, 10.0)


def test_empty_config_file_is_the_defaults(config):
    assert load_settings({}, config("")) == load_settings({})


def test_key_and_secret_leave_development_mode():
    settings = load_settings(KEYS)
    assert settings.dev_mode is False
    assert (settings.api_key, settings.api_secret) == ("APIkey", SECRET)


def test_environment_is_only_the_mapping_given(monkeypatch):
    # load_settings reads no os.environ of its own.
    monkeypatch.setenv("LIVEKIT_API_KEY", "from-process")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "from-process-secret")
    monkeypatch.setenv("SERVER_PORT", "1234")
    settings = load_settings({})
    assert settings.dev_mode is True
    assert settings.port == 6080


def test_every_setting_from_the_environment():
    environ = {
        **KEYS,
        "SERVER_HOST": "::1",
        "SERVER_PORT": "0",
        "SERVER_MAX_CONNECTIONS": "2",
        "SERVER_IDLE_TIMEOUT": "0.5",
        "SERVER_REQUEST_TIMEOUT": "30",
        "LIVEKIT_URL": "wss://env.example.com",
        "TOKEN_TTL": "1",
        "TOKEN_CLIENT_FIELDS": "participant_name participant_metadata participant_attributes room_config",
        "CORS_ALLOWED_ORIGINS": "https://app.example.com",
        "UNRELATED": "ignored",
    }
    settings = load_settings(environ)
    assert settings == Settings(
        api_key="APIkey",
        api_secret=SECRET,
        livekit_url="wss://env.example.com",
        host="::1",
        port=0,
        token_ttl=1,
        client_fields=frozenset({"participant_name", "participant_metadata", "participant_attributes", "room_config"}),
        allowed_origins=frozenset({"https://app.example.com"}),
        max_connections=2,
        idle_timeout=0.5,
        request_timeout=30.0,
    )
    assert (settings.api_key, settings.api_secret) == ("APIkey", SECRET)


def test_every_setting_from_the_config_file(config):
    settings = load_settings({}, config(FULL_CONFIG))
    assert settings.dev_mode is False
    assert (settings.api_key, settings.api_secret) == ("APIconfig", SECRET)
    assert settings.livekit_url == "wss://lk.example.com"
    assert (settings.host, settings.port) == ("127.0.0.1", 7000)
    assert settings.max_connections == 8
    assert (settings.idle_timeout, settings.request_timeout) == (2.5, 4.0)
    assert type(settings.request_timeout) is float and type(settings.port) is int
    assert settings.token_ttl == 600
    assert settings.client_fields == frozenset({"participant_name", "room_config"})
    assert settings.allowed_origins == frozenset({"https://a.example", "https://b.example:8443"})


def test_environment_overrides_the_config_file(config):
    environ = {
        "LIVEKIT_API_KEY": "APIenv",
        "SERVER_PORT": "9000",
        "TOKEN_CLIENT_FIELDS": "",
        "CORS_ALLOWED_ORIGINS": "*",
    }
    settings = load_settings(environ, config(FULL_CONFIG))
    assert settings.api_key == "APIenv"
    assert settings.api_secret == SECRET  # from the file
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"  # from the file
    assert settings.client_fields == frozenset()
    assert settings.allowed_origins == frozenset({"*"})


def test_key_from_the_file_and_secret_from_the_environment(config):
    path = config("[livekit]\napi_key = APIfile\n")
    settings = load_settings({"LIVEKIT_API_SECRET": SECRET}, path)
    assert (settings.api_key, settings.api_secret, settings.dev_mode) == ("APIfile", SECRET, False)


def test_config_keys_are_case_insensitive_and_values_stripped(config):
    settings = load_settings({}, config("[server]\nPORT =   7001  \nHost=127.0.0.2\n"))
    assert (settings.port, settings.host) == (7001, "127.0.0.2")


def test_values_with_percent_signs_are_taken_literally(config):
    # No configparser interpolation: a secret may hold "%".
    settings = load_settings({}, config("[livekit]\napi_key = APIk\napi_secret = 100%(x)s%%\n"))
    assert settings.api_secret == "100%(x)s%%"


def test_environment_values_are_stripped():
    assert load_settings({"SERVER_PORT": " 7002\n"}).port == 7002


# --------------------------------------------------------------------------
# API key and secret


KEY_ROWS = [
    ({"LIVEKIT_API_KEY": "APIkey"}, "LIVEKIT_API_SECRET", "key-without-secret"),
    ({"LIVEKIT_API_SECRET": SECRET}, "LIVEKIT_API_KEY", "secret-without-key"),
    ({"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": SECRET}, "LIVEKIT_API_KEY", "empty-key"),
    ({"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": ""}, "LIVEKIT_API_SECRET", "empty-secret"),
    ({"LIVEKIT_API_KEY": "   ", "LIVEKIT_API_SECRET": SECRET}, "LIVEKIT_API_KEY", "blank-key"),
    ({"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": " \t"}, "LIVEKIT_API_SECRET", "blank-secret"),
    ({"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": ""}, "LIVEKIT_API_KEY", "both-empty"),
    ({"LIVEKIT_API_KEY": ""}, "LIVEKIT_API_", "empty-key-alone"),
]


@pytest.mark.parametrize("environ,name", [row[:2] for row in KEY_ROWS], ids=[row[2] for row in KEY_ROWS])
def test_incomplete_credentials_are_an_error_naming_the_setting(environ, name):
    with pytest.raises(SettingsError, match=name) as caught:
        load_settings(environ)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "text,name",
    [
        ("[livekit]\napi_key = APIk\n", "LIVEKIT_API_SECRET"),
        (f"[livekit]\napi_secret = {SECRET}\n", "LIVEKIT_API_KEY"),
        (f"[livekit]\napi_key =\napi_secret = {SECRET}\n", "LIVEKIT_API_KEY"),
        ("[livekit]\napi_key = APIk\napi_secret =\n", "LIVEKIT_API_SECRET"),
    ],
    ids=["key-without-secret", "secret-without-key", "empty-key", "empty-secret"],
)
def test_incomplete_credentials_in_the_config_file(config, text, name):
    with pytest.raises(SettingsError, match=name) as caught:
        load_settings({}, config(text))
    assert SECRET not in str(caught.value)


# --------------------------------------------------------------------------
# The config file itself


@pytest.mark.parametrize(
    "text,named",
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[sevrer]\nport = 1\n", "sevrer.port"),
        ("[Server]\nport = 1\n", "Server.port"),
        ("[livekit]\napi_secrets = x\n", "livekit.api_secrets"),
        ("[tokens]\nclient_field = participant_name\n", "tokens.client_field"),
        ("[cors]\nallowed_origin = *\n", "cors.allowed_origin"),
        ("[livekit]\nLIVEKIT_API_KEY = k\n", "livekit.livekit_api_key"),
    ],
    ids=["key-typo", "section-typo", "section-case", "plural", "singular", "cors-singular", "env-name-in-file"],
)
def test_unknown_setting_in_the_config_file_is_an_error_naming_it(config, text, named):
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings({}, config(text))


def test_default_section_is_not_silently_ignored(config):
    path = config("[DEFAULT]\nport = 9000\n")
    try:
        settings = load_settings({}, path)
    except SettingsError as err:
        assert "port" in str(err)
    else:
        assert settings.port == 9000


def test_unknown_empty_section_is_an_error(config):
    with pytest.raises(SettingsError, match="sevrer"):
        load_settings({}, config("[sevrer]\n"))


def test_unreadable_config_file_is_an_error(tmp_path):
    missing = tmp_path / "missing.ini"
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings({}, str(missing))


def test_directory_as_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings({}, str(tmp_path))


@pytest.mark.parametrize(
    "content",
    [
        b"[server]\nport = 1\n\xff\xfe\n",
        "[server]\nport = 1\n".encode("utf-16"),
        b"port = 1\n",
        b"[server]\nport = 1\nport = 2\n",
        b"[server]\nport = 1\n[server]\nhost = x\n",
        b"[server\nport = 1\n",
        b"[server]\n  = 1\n",
    ],
    ids=["invalid-utf8", "utf16", "no-section", "duplicate-key", "duplicate-section", "broken-header", "no-key"],
)
def test_malformed_config_file_is_an_error(config, content):
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings({}, config(content))


def test_config_file_error_does_not_show_the_secret(config):
    path = config(f"[livekit]\napi_key = k\napi_secret = {SECRET}\napi_secret = {SECRET}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert SECRET not in str(caught.value)


# --------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    "value",
    ["+1", "1_0", "abc", "70000", "65536", "-1", "1.0", "0x10", "1e3", "", "\u0661\u0662", "\uff11", "80 81", "80,81"],
    ids=[
        "plus",
        "underscore",
        "letters",
        "70000",
        "65536",
        "negative",
        "float",
        "hex",
        "exponent",
        "empty",
        "arabic-indic",
        "fullwidth",
        "two-numbers",
        "comma",
    ],
)
def test_bad_server_port_is_an_error_naming_it(value):
    with pytest.raises(SettingsError, match="SERVER_PORT"):
        load_settings({"SERVER_PORT": value})


@pytest.mark.parametrize("value", ["+1", "1_0", "abc", "70000"], ids=["plus", "underscore", "letters", "70000"])
def test_bad_port_in_the_config_file_is_an_error_naming_it(config, value):
    with pytest.raises(SettingsError, match=r"server\.port"):
        load_settings({}, config(f"[server]\nport = {value}\n"))


@pytest.mark.parametrize("value,port", [("0", 0), ("65535", 65535), ("080", 80)], ids=["0", "65535", "leading-zero"])
def test_good_server_port(value, port):
    assert load_settings({"SERVER_PORT": value}).port == port


def test_server_port_with_5000_digits_is_a_settings_error():
    with pytest.raises(SettingsError, match="SERVER_PORT"):
        load_settings({"SERVER_PORT": "9" * 5000})


@pytest.mark.parametrize(
    "name,value",
    [
        ("TOKEN_TTL", "0"),
        ("TOKEN_TTL", "-60"),
        ("TOKEN_TTL", "1.5"),
        ("TOKEN_TTL", "15m"),
        ("SERVER_MAX_CONNECTIONS", "0"),
        ("SERVER_MAX_CONNECTIONS", "+8"),
        ("SERVER_IDLE_TIMEOUT", "1e3"),
        ("SERVER_IDLE_TIMEOUT", ".5"),
        ("SERVER_IDLE_TIMEOUT", "inf"),
        ("SERVER_IDLE_TIMEOUT", "nan"),
        ("SERVER_REQUEST_TIMEOUT", "-1"),
        ("SERVER_REQUEST_TIMEOUT", "1_0.0"),
    ],
    ids=lambda value: value if value else "empty",
)
def test_bad_numbers_are_an_error_naming_the_setting(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize("name", ["SERVER_IDLE_TIMEOUT", "SERVER_REQUEST_TIMEOUT"])
def test_zero_timeout_is_an_error_naming_the_variable(name):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: "0"})


@pytest.mark.parametrize("name", ["SERVER_IDLE_TIMEOUT", "SERVER_REQUEST_TIMEOUT"])
def test_infinite_timeout_is_an_error(name):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: "9" * 400})


def test_token_ttl_too_large_for_the_app_is_a_settings_error():
    try:
        settings = load_settings({"TOKEN_TTL": str(10**14)})
    except SettingsError as err:
        assert "TOKEN_TTL" in str(err)
    else:
        make_app(settings)


def test_timeouts_take_decimals():
    settings = load_settings({"SERVER_IDLE_TIMEOUT": "0.25", "SERVER_REQUEST_TIMEOUT": "3"})
    assert (settings.idle_timeout, settings.request_timeout) == (0.25, 3.0)


# --------------------------------------------------------------------------
# Token client fields and CORS origins


@pytest.mark.parametrize(
    "value,fields",
    [
        ("", frozenset()),
        ("participant_name", frozenset({"participant_name"})),
        ("participant_name,room_config", frozenset({"participant_name", "room_config"})),
        (
            " participant_name, participant_metadata  participant_attributes,room_config ",
            frozenset({"participant_name", "participant_metadata", "participant_attributes", "room_config"}),
        ),
    ],
    ids=["none", "one", "comma", "mixed-separators"],
)
def test_token_client_fields(value, fields):
    assert load_settings({"TOKEN_CLIENT_FIELDS": value}).client_fields == fields


@pytest.mark.parametrize(
    "value",
    ["participant_name bogus", "room_name", "participant_identity", "participantName", "Participant_Name", "*"],
    ids=["unknown", "room_name", "participant_identity", "camelCase", "wrong-case", "wildcard"],
)
def test_unknown_token_client_field_is_an_error_naming_the_setting(value):
    with pytest.raises(SettingsError, match="TOKEN_CLIENT_FIELDS"):
        load_settings({"TOKEN_CLIENT_FIELDS": value})


@pytest.mark.parametrize(
    "value,origins",
    [
        ("*", frozenset({"*"})),
        (" * ", frozenset({"*"})),
        ("https://a.example, https://b.example", frozenset({"https://a.example", "https://b.example"})),
        ("https://a.example https://a.example", frozenset({"https://a.example"})),
        ("http://localhost:5173", frozenset({"http://localhost:5173"})),
        ("https://127.0.0.1:8443", frozenset({"https://127.0.0.1:8443"})),
    ],
    ids=["wildcard", "wildcard-spaces", "two-origins", "repeated", "localhost-port", "ip-port"],
)
def test_cors_allowed_origins(value, origins):
    assert load_settings({"CORS_ALLOWED_ORIGINS": value}).allowed_origins == origins


@pytest.mark.parametrize(
    "value",
    [
        "https://*.example.com",
        "* https://a.example",
        "https://a.example, *",
        "https://a.example/",
        "https://a.example/path",
        "a.example",
        "//a.example",
        "ftp://a.example",
        "https://",
        "null",
        "https://user@a.example",
        "https://a.example:port",
        "https://a.example:123456",
        "https://a.example?x=1",
        "https://[::1]:8443",
        ".*",
        "https://a.example|https://b.example",
    ],
    ids=[
        "subdomain-wildcard",
        "wildcard-and-origin",
        "origin-and-wildcard",
        "trailing-slash",
        "path",
        "no-scheme",
        "scheme-relative",
        "ftp",
        "no-host",
        "null",
        "userinfo",
        "port-name",
        "port-6-digits",
        "query",
        "ipv6",
        "regex",
        "regex-alternation",
    ],
)
def test_invalid_cors_allowed_origins_are_an_error_naming_the_setting(value):
    with pytest.raises(SettingsError, match="CORS_ALLOWED_ORIGINS"):
        load_settings({"CORS_ALLOWED_ORIGINS": value})


# --------------------------------------------------------------------------
# Settings itself


@pytest.mark.parametrize(
    "overrides,name",
    [
        ({"api_key": ""}, "LIVEKIT_API_KEY"),
        ({"api_secret": ""}, "LIVEKIT_API_SECRET"),
        ({"port": 65536}, "SERVER_PORT"),
        ({"port": -1}, "SERVER_PORT"),
        ({"token_ttl": 0}, "TOKEN_TTL"),
        ({"client_fields": frozenset({"room_name"})}, "TOKEN_CLIENT_FIELDS"),
        ({"allowed_origins": frozenset({"*", "https://a.example"})}, "CORS_ALLOWED_ORIGINS"),
        ({"allowed_origins": frozenset({"https://*.a.example"})}, "CORS_ALLOWED_ORIGINS"),
        ({"max_connections": 0}, "SERVER_MAX_CONNECTIONS"),
    ],
    ids=[
        "empty-key",
        "empty-secret",
        "port-65536",
        "port-negative",
        "ttl-0",
        "client-field",
        "wildcard-and-origin",
        "origin-pattern",
        "no-connections",
    ],
)
def test_settings_validate_when_built(overrides, name):
    values = {"api_key": "APIkey", "api_secret": SECRET, **overrides}
    with pytest.raises(SettingsError, match=name):
        Settings(**values)


def test_settings_are_frozen():
    settings = load_settings(KEYS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api_secret = "other"


def test_settings_repr_hides_the_credentials(config):
    for settings in (load_settings(KEYS), load_settings({}, config(FULL_CONFIG))):
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings)
        assert settings.api_key not in repr(settings)
    assert "secret" not in repr(load_settings({}))  # the dev secret is "secret"


# --------------------------------------------------------------------------
# config.ini.example stays true


EXAMPLE = Path(__file__).resolve().parents[1] / "config.ini.example"


def test_config_example_holds_exactly_the_built_in_defaults():
    from_example = load_settings({}, str(EXAMPLE))
    assert from_example == Settings(api_key="devkey", api_secret="secret", dev_mode=True)


@pytest.mark.parametrize("section, key, env_name", [source[:3] for source in server._SETTINGS_SOURCES])
def test_config_example_documents_every_setting_with_its_variable(section, key, env_name):
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    assert re.search(rf"^#? ?{key} =", block, re.MULTILINE), f"{section}.{key} missing"
    assert f"# {env_name}\n" in block


@pytest.mark.parametrize("section, key, env_name", [source[:3] for source in server._SETTINGS_SOURCES])
def test_readme_lists_every_setting(section, key, env_name):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"| `{env_name}` | `{section}.{key}` |" in readme
