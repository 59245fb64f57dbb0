"""Settings (server.py, section 1) and load_settings: defaults, then config.ini, then the
environment; errors name the key.

Every setting is tested here: its source, default and refusals, those of the token policy and
of webhook delivery included; what check_startup refuses or warns about in a set of settings;
and `python3 server.py` exiting 2 with the message that names a bad one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import server
from server import (
    DEV_API_KEY,
    DEV_API_SECRET,
    SETTING_SOURCES,
    Settings,
    SettingsError,
    check_startup,
    load_settings,
    make_app,
)
from helpers import AUTH_1, AUTH_2, COVERAGE_ENV, TIME, start

# The test key pair's Settings, with overrides (as test_token_policy.py builds its apps);
# `settings` is a local name here.
from helpers import settings as app_settings
from support_http import TIMEOUT, LoggedProcess, http_request

SECRET = "a-long-secret-that-must-never-leak-0123456789"
KEYS = {"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": SECRET}
ROOT = Path(__file__).resolve().parents[1]
# Under `coverage run` (README, "Tests"), the variables that make a child Python measure
# itself; the commands below otherwise get only what they are given. Empty in a plain run.


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
    assert (
        (settings.api_key, settings.api_secret)
        == (DEV_API_KEY, DEV_API_SECRET)
        == ("devkey", "secret")
    )
    assert settings.livekit_url == "ws://localhost:7880"
    # On LiveKit's public dev key, only this machine can reach it unless SERVER_HOST says otherwise.
    assert (settings.host, settings.port) == ("127.0.0.1", 6080)
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
    assert (
        settings.host == "0.0.0.0"
    )  # the tutorials' and containers' default, once the keys are real


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
        client_fields=frozenset(
            {"participant_name", "participant_metadata", "participant_attributes", "room_config"}
        ),
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
    secret = "100%(x)s%%-and-more-to-make-32-characters"
    settings = load_settings({}, config(f"[livekit]\napi_key = APIk\napi_secret = {secret}\n"))
    assert settings.api_secret == secret


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
    (
        {"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": " \t"},
        "LIVEKIT_API_SECRET",
        "blank-secret",
    ),
    ({"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": ""}, "LIVEKIT_API_KEY", "both-empty"),
    ({"LIVEKIT_API_KEY": ""}, "LIVEKIT_API_", "empty-key-alone"),
]


@pytest.mark.parametrize(
    "environ,name", [row[:2] for row in KEY_ROWS], ids=[row[2] for row in KEY_ROWS]
)
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


UNKNOWN_SETTING_ROWS = [
    ("[server]\nprot = 1\n", 2, "server.prot; did you mean server.port?", "key-typo"),
    ("[sevrer]\nport = 1\n", 2, "sevrer.port; did you mean server.port?", "section-typo"),
    ("[Server]\nport = 1\n", 2, "Server.port; did you mean server.port?", "section-case"),
    (
        "[livekit]\napi_secrets = x\n",
        2,
        "livekit.api_secrets; did you mean livekit.api_secret?",
        "plural",
    ),
    (
        "[tokens]\nclient_field = participant_name\n",
        2,
        "tokens.client_field; did you mean tokens.client_fields?",
        "singular",
    ),
    (
        "# comment\n\n[server]\nport = 1\n\n[cors]\nallowed_origin = *\n",
        7,
        "cors.allowed_origin; did you mean cors.allowed_origins?",
        "cors-singular",
    ),
    ("[livekit]\nLIVEKIT_API_KEY = k\n", 2, "livekit.livekit_api_key", "env-name-in-file"),
    ("[server]\nmetrics = true\n", 2, "server.metrics", "removed-metrics"),
    ("[server]\nlog_format = json\n", 2, "server.log_format", "removed-log-format"),
    ("[tokens]\nsafe_names = true\n", 2, "tokens.safe_names", "removed-safe-names"),
    (
        "[tokens]\nttl = 60\nmax_name_length = 64\n",
        3,
        "tokens.max_name_length",
        "removed-max-name-length",
    ),
    ("[tokens]\nhidden = true\n", 2, "tokens.hidden", "removed-hidden"),
    (
        "[tokens]\ncan_update_own_metadata = true\n",
        2,
        "tokens.can_update_own_metadata",
        "removed-can-update-own-metadata",
    ),
    (
        "[webhook]\napi_keys = wk1:wk1-webhook-secret-0123456789\n",
        2,
        "webhook.api_keys",
        "removed-webhook-api-keys",
    ),
]


@pytest.mark.parametrize(
    "text,line,named",
    [row[:3] for row in UNKNOWN_SETTING_ROWS],
    ids=[row[3] for row in UNKNOWN_SETTING_ROWS],
)
def test_unknown_setting_in_the_config_file_is_an_error_naming_file_line_and_key(
    config, text, line, named
):
    path = config(text)
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == f"{path}, line {line}: unknown setting {named}"


def test_unknown_setting_names_its_own_line_when_the_key_also_appears_in_an_earlier_section(config):
    path = config("[server]\nport = 1\n[sevrer]\nport = 2\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert (
        str(caught.value)
        == f"{path}, line 4: unknown setting sevrer.port; did you mean server.port?"
    )


def test_default_section_is_not_silently_ignored(config):
    path = config("[DEFAULT]\nport = 9000\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == f"{path}: [DEFAULT] is not read; put port in its own section"


def test_unknown_empty_section_is_an_error(config):
    with pytest.raises(SettingsError, match="sevrer"):
        load_settings({}, config("[sevrer]\n"))


@pytest.mark.parametrize(
    "where,reason",
    [
        (lambda tmp: tmp / "missing.ini", "No such file or directory"),
        (lambda tmp: tmp, "Is a directory"),
    ],
    ids=["missing", "directory"],
)
def test_unreadable_config_file_is_an_error_naming_it_and_the_reason(tmp_path, where, reason):
    path = str(where(tmp_path))
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == f"cannot read config file {path}: {reason} (check --config)"


MALFORMED_CONFIG_ROWS = [
    (b"[server]\nport = 1\n\xff\xfe\n", "config file {path} is not UTF-8", "invalid-utf8"),
    ("[server]\nport = 1\n".encode("utf-16"), "config file {path} is not UTF-8", "utf16"),
    (b"port = 1\n", "{path}, line 1: a setting comes before any [section]", "no-section"),
    (
        b"\n# c\nport = 1\n",
        "{path}, line 3: a setting comes before any [section]",
        "no-section-after-comment",
    ),
    (
        b"[server]\nport = 1\nport = 2\n",
        "{path}, line 3: server.port is set twice",
        "duplicate-key",
    ),
    (
        b"# c\n\n[tokens]\nttl = 1\nttl = 2\n",
        "{path}, line 5: tokens.ttl is set twice",
        "duplicate-ttl",
    ),
    (
        b"[server]\nport = 1\n[server]\nhost = x\n",
        "{path}, line 3: [server] appears twice",
        "duplicate-section",
    ),
    (
        b"[server\nport = 1\n",
        "{path}, line 1: a setting comes before any [section]",
        "broken-header",
    ),
    (b"[server]\n  = 1\n", "{path}, line 2: a line is neither [section] nor key = value", "no-key"),
    (
        b"[server]\nport = 1\njunk\n",
        "{path}, line 3: a line is neither [section] nor key = value",
        "no-equals",
    ),
]


@pytest.mark.parametrize(
    "content,message",
    [row[:2] for row in MALFORMED_CONFIG_ROWS],
    ids=[row[2] for row in MALFORMED_CONFIG_ROWS],
)
def test_malformed_config_file_is_an_error_naming_file_and_line(config, content, message):
    path = config(content)
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == message.format(path=path)


@pytest.mark.parametrize(
    "text",
    [
        f"[livekit]\napi_key = k\napi_secret = {SECRET}\napi_secret = {SECRET}\n",
        f"[livekit]\napi_key = k\n{SECRET}\n",
        f"[livekit]\napi_key = k\n= {SECRET}\n",
        f"api_secret = {SECRET}\n",
    ],
    ids=["set-twice", "bare-line", "no-key", "before-any-section"],
)
def test_config_file_error_does_not_show_the_secret(config, text):
    # configparser's own messages quote the line; ours name the line number instead.
    with pytest.raises(SettingsError) as caught:
        load_settings({}, config(text))
    assert SECRET not in str(caught.value)
    assert re.search(r", line [0-9]+: ", str(caught.value))


# --------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(
    "value",
    [
        "+1",
        "1_0",
        "abc",
        "70000",
        "65536",
        "-1",
        "1.0",
        "0x10",
        "1e3",
        "",
        "\u0661\u0662",
        "\uff11",
        "80 81",
        "80,81",
    ],
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


@pytest.mark.parametrize(
    "value", ["+1", "1_0", "abc", "70000"], ids=["plus", "underscore", "letters", "70000"]
)
def test_bad_port_in_the_config_file_is_an_error_naming_it(config, value):
    with pytest.raises(SettingsError, match=r"server\.port"):
        load_settings({}, config(f"[server]\nport = {value}\n"))


@pytest.mark.parametrize(
    "value,port", [("0", 0), ("65535", 65535), ("080", 80)], ids=["0", "65535", "leading-zero"]
)
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
            frozenset(
                {
                    "participant_name",
                    "participant_metadata",
                    "participant_attributes",
                    "room_config",
                }
            ),
        ),
    ],
    ids=["none", "one", "comma", "mixed-separators"],
)
def test_token_client_fields(value, fields):
    assert load_settings({"TOKEN_CLIENT_FIELDS": value}).client_fields == fields


@pytest.mark.parametrize(
    "value",
    [
        "participant_name bogus",
        "room_name",
        "participant_identity",
        "participantName",
        "Participant_Name",
        "*",
    ],
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
        (
            "https://a.example, https://b.example",
            frozenset({"https://a.example", "https://b.example"}),
        ),
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
# A list setting that is set but lists nothing fails closed

# Each of these, empty, would quietly mean "anyone" or "anything": no bearer secret,
# no room rule, every source, every origin.
FAIL_CLOSED_LISTS = [
    "TOKEN_AUTH_SECRETS",
    "TOKEN_ROOMS",
    "TOKEN_CAN_PUBLISH_SOURCES",
    "CORS_ALLOWED_ORIGINS",
]
NOTHING = [",", " , ", ",,,", ""]
NOTHING_IDS = ["comma", "spaced-comma", "commas", "empty"]


def nothing_listed(name: str) -> str:
    return f"{name} is set but lists nothing; remove it to get the default"


def field_of(env_name: str) -> str:
    return next(field for field, (_, _, env) in SETTING_SOURCES.items() if env == env_name)


@pytest.mark.parametrize("text", NOTHING, ids=NOTHING_IDS)
@pytest.mark.parametrize("env_name", FAIL_CLOSED_LISTS)
def test_list_setting_that_lists_nothing_is_an_error_naming_it(env_name, text):
    for environ in (KEYS, {}):  # with real keys, and in development mode
        with pytest.raises(SettingsError) as caught:
            load_settings({**environ, env_name: text})
        assert str(caught.value) == nothing_listed(env_name)


@pytest.mark.parametrize("text", NOTHING, ids=NOTHING_IDS)
@pytest.mark.parametrize("env_name", FAIL_CLOSED_LISTS)
def test_list_setting_that_lists_nothing_in_the_config_file_is_an_error_naming_the_key(
    config, env_name, text
):
    section, key, _ = SETTING_SOURCES[field_of(env_name)]
    with pytest.raises(SettingsError) as caught:
        path = config(f"[{section}]\n{key} = {text}\n")
        load_settings(KEYS, path)
    assert str(caught.value) == f"{path}, line 2: " + nothing_listed(f"{section}.{key}")


@pytest.mark.parametrize("env_name", FAIL_CLOSED_LISTS)
def test_list_setting_left_out_keeps_its_default(env_name):
    defaults = {field.name: field.default for field in dataclasses.fields(Settings)}
    assert getattr(load_settings(KEYS), field_of(env_name)) == defaults[field_of(env_name)]


@pytest.mark.parametrize("text", NOTHING, ids=NOTHING_IDS)
@pytest.mark.parametrize(
    "env_name,field,value",
    [
        ("TOKEN_CLIENT_FIELDS", "client_fields", frozenset()),
        ("SERVER_TRUSTED_PROXIES", "trusted_proxies", ()),
    ],
    ids=["client-fields", "trusted-proxies"],
)
def test_lists_where_nothing_lets_in_less_may_be_empty(env_name, field, value, text):
    assert getattr(load_settings({**KEYS, env_name: text}), field) == value


def run_command(environ: dict, *args: str) -> subprocess.CompletedProcess:
    """`python3 server.py ARGS` with only `environ` (and PATH) as its environment; it must exit by itself."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **COVERAGE_ENV,
        **environ,
    }
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def logged_error(message: str) -> str:
    """How the server's logfmt line carries a configuration error."""
    return f'msg="configuration error" error={json.dumps(message)}'


@pytest.mark.parametrize(
    "env_name,text",
    [(name, NOTHING[i % len(NOTHING)]) for i, name in enumerate(FAIL_CLOSED_LISTS)],
    ids=FAIL_CLOSED_LISTS,
)
def test_the_command_exits_2_naming_a_list_setting_that_lists_nothing(env_name, text):
    done = run_command({**KEYS, "SERVER_PORT": "0", env_name: text})
    assert done.returncode == 2, done.stderr
    assert logged_error(nothing_listed(env_name)) in done.stderr
    assert "msg=listening" not in done.stderr
    assert SECRET not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "env, message",
    [
        pytest.param(
            {"TOKEN_AUTH_SECRETS": ","},
            "TOKEN_AUTH_SECRETS is set but lists nothing; remove it to get the default",
            id="auth-secrets",
        ),
        pytest.param({"TOKEN_ROOMS": " "}, "TOKEN_ROOMS is set but lists nothing", id="rooms"),
        pytest.param(
            {"CORS_ALLOWED_ORIGINS": ""},
            "CORS_ALLOWED_ORIGINS is set but lists nothing",
            id="origins",
        ),
        pytest.param(
            {"TOKEN_CAN_PUBLISH_SOURCES": ", ,"},
            "TOKEN_CAN_PUBLISH_SOURCES is set but lists nothing",
            id="sources",
        ),
        pytest.param(
            {"LIVEKIT_API_KEY": "APIkey"},
            "livekit.api_key (LIVEKIT_API_KEY) is set but livekit.api_secret (LIVEKIT_API_SECRET) is not",
            id="key-alone",
        ),
    ],
)
def test_a_list_set_but_empty_or_half_the_credentials_exits_2_naming_the_setting(env, message):
    # The message names where the value came from: the variable here, section.key from config.ini.
    process = start(SERVER_PORT="0", **env)
    try:
        code = process.proc.wait(TIMEOUT)
        process.reader.join(TIMEOUT)
    finally:
        process.kill()
    assert code == 2
    (line,) = process.output.splitlines()
    error = re.fullmatch(TIME + r' level=ERROR msg="configuration error" error="(.*)"', line)
    assert error and error[1].startswith(message), line


def test_the_command_exits_2_naming_a_config_file_it_cannot_read(tmp_path):
    path = tmp_path / "missing.ini"
    done = run_command({**KEYS, "SERVER_PORT": "0"}, "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert (
        logged_error(f"cannot read config file {path}: No such file or directory (check --config)")
        in done.stderr
    )


def test_the_command_exits_2_naming_the_line_of_a_config_file_error(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("[tokens]\nttl = 60\nttl = 120\n", encoding="utf-8")
    done = run_command({**KEYS, "SERVER_PORT": "0"}, "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert logged_error(f"{path}, line 3: tokens.ttl is set twice") in done.stderr


# --------------------------------------------------------------------------
# Development mode listens on loopback; check_startup says what is open

DEV_MODE = (
    "DEVELOPMENT MODE: tokens are signed with LiveKit's public development key, which anyone can sign "
    "with; webhooks are taken only from this machine. "
)
DEV_MODE_LOOPBACK = (
    DEV_MODE
    + "Listening on loopback only; SERVER_HOST=0.0.0.0 opens it to the local network (phones)."
)
LONG_AUTH = "a-bearer-secret-of-at-least-32-characters"


def dev_mode_exposed(host: str = "0.0.0.0") -> str:
    return DEV_MODE + f"Listening on {host}: never expose this server."


def token_open() -> str:
    return (
        "/token is open: anyone who can reach this server can get tokens. "
        "tokens.auth_secrets (TOKEN_AUTH_SECRETS) closes it."
    )


def test_development_mode_defaults_to_loopback():
    assert load_settings({}).host == "127.0.0.1"
    assert load_settings({"SERVER_PORT": "7000"}).host == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "127.0.0.1"])
def test_development_mode_takes_the_host_given(config, host):
    assert load_settings({"SERVER_HOST": host}).host == host
    assert load_settings({}, config(f"[server]\nhost = {host}\n")).host == host


def test_real_keys_keep_the_public_default_host():
    assert load_settings(KEYS).host == "0.0.0.0"
    assert Settings(api_key="k", api_secret=SECRET).host == "0.0.0.0"


def startup_warnings(caplog, settings: Settings) -> list:
    with caplog.at_level(logging.WARNING, logger="livekit_token_server"):
        check_startup(settings)
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "livekit_token_server" and record.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, [DEV_MODE_LOOPBACK]),
        ({"SERVER_HOST": "::1"}, [DEV_MODE_LOOPBACK]),
        ({"SERVER_HOST": "localhost"}, [DEV_MODE_LOOPBACK]),
        ({"SERVER_HOST": "127.0.0.2"}, [DEV_MODE_LOOPBACK]),
        ({"SERVER_HOST": "0.0.0.0"}, [dev_mode_exposed(), token_open()]),
        ({"SERVER_HOST": "0.0.0.0", "SERVER_PORT": "7000"}, [dev_mode_exposed(), token_open()]),
        ({"SERVER_HOST": "0.0.0.0", "TOKEN_AUTH_SECRETS": LONG_AUTH}, [dev_mode_exposed()]),
        ({"SERVER_HOST": "::"}, [dev_mode_exposed("::"), token_open()]),
        ({**KEYS}, [token_open()]),
        ({**KEYS, "SERVER_HOST": "192.0.2.10"}, [token_open()]),
        ({**KEYS, "TOKEN_AUTH_SECRETS": LONG_AUTH}, []),
        ({**KEYS, "SERVER_HOST": "127.0.0.1"}, []),
        ({**KEYS, "SERVER_HOST": "::1"}, []),
        ({**KEYS, "SERVER_HOST": "localhost"}, []),
    ],
    ids=[
        "dev",
        "dev-ipv6-loopback",
        "dev-localhost",
        "dev-127-0-0-2",
        "dev-every-interface",
        "dev-other-port",
        "dev-with-secrets",
        "dev-ipv6-any",
        "keys",
        "keys-one-address",
        "keys-with-secrets",
        "keys-loopback",
        "keys-ipv6-loopback",
        "keys-localhost",
    ],
)
def test_check_startup_warns_about_development_mode_and_an_open_token_endpoint(
    caplog, environ, expected
):
    assert startup_warnings(caplog, load_settings(environ)) == expected


# A dev-mode server's log line once it listens (logfmt): which host, which port.
LISTENING_ON = re.compile(r"msg=listening host=(\S+) port=([0-9]+)")


def start_command(environ: dict) -> LoggedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **COVERAGE_ENV,
        **environ,
    }
    return LoggedProcess([sys.executable, "server.py"], cwd=ROOT, env=env)


def test_the_command_in_development_mode_listens_on_loopback():
    process = start_command({"SERVER_PORT": "0"})
    try:
        port = process.port(re.compile(r"msg=listening host=127\.0\.0\.1 port=([0-9]+)"))
        assert LISTENING_ON.search(process.output)[1] == "127.0.0.1"
        assert "level=WARNING msg=" + json.dumps(DEV_MODE_LOOPBACK) in process.output
        assert "/token is open" not in process.output
        status, _, body = http_request(port, "GET", "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert process.stop() == 0
    finally:
        process.kill()


def test_the_command_in_development_mode_takes_server_host():
    process = start_command({"SERVER_PORT": "0", "SERVER_HOST": "0.0.0.0"})
    try:
        port = process.port(re.compile(r"msg=listening host=0\.0\.0\.0 port=([0-9]+)"))
        assert "level=WARNING msg=" + json.dumps(dev_mode_exposed()) in process.output
        assert (
            'level=WARNING msg="/token is open: anyone who can reach this server' in process.output
        )
        status, _, _ = http_request(port, "GET", "/healthz")
        assert status == 200
        assert process.stop() == 0
    finally:
        process.kill()


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


EXAMPLE = ROOT / "config.ini.example"


def test_config_example_holds_exactly_the_built_in_defaults():
    # A copy of the example, untouched, must start the server exactly as no file at all would.
    assert load_settings({}, str(EXAMPLE)) == load_settings({})
    assert load_settings(KEYS, str(EXAMPLE)) == load_settings(KEYS)


@pytest.mark.parametrize(
    "section, key, env_name", [source[:3] for source in SETTING_SOURCES.values()]
)
def test_config_example_documents_every_setting_with_its_variable(section, key, env_name):
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    assert re.search(rf"^#? ?{key} =", block, re.MULTILINE), f"{section}.{key} missing"
    assert f"# {env_name}\n" in block


@pytest.mark.parametrize(
    "section, key, env_name", [source[:3] for source in SETTING_SOURCES.values()]
)
def test_readme_lists_every_setting(section, key, env_name):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"| `{env_name}` | `{section}.{key}` |" in readme


def test_readme_lists_no_setting_that_does_not_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([A-Z_]+)` \| `([a-z_]+)\.([a-z_]+)` \|", readme, re.MULTILINE))
    assert listed  # the table is still there, in this shape
    assert listed - {(env, section, key) for section, key, env in SETTING_SOURCES.values()} == set()


@pytest.mark.parametrize("name", sorted(server.REMOVED_SETTINGS))
def test_a_setting_of_an_earlier_version_stops_the_server_rather_than_being_ignored(name):
    # WEBHOOK_API_KEYS ignored would turn webhooks signed with those keys into 401s, which
    # LiveKit takes as delivered; TOKEN_HIDDEN ignored would hand out visible participants.
    with pytest.raises(SettingsError) as caught:
        load_settings({"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32, name: "true"})
    assert (
        str(caught.value) == f"{name} is no longer a setting (README.md, Configuration, lists them)"
    )


@pytest.mark.parametrize("key", ["metrics", "log_format"])
def test_metrics_and_log_format_keys_in_the_config_file_are_unknown_settings(tmp_path, key):
    path = tmp_path / "config.ini"
    path.write_text(f"[server]\nport = 6080\n{key} = true\n", encoding="utf-8")
    with pytest.raises(server.SettingsError, match=rf"line 3: unknown setting server\.{key}$"):
        server.load_settings({}, str(path))


def test_server_metrics_and_log_format_variables_stop_the_server_and_unrelated_ones_do_not():
    assert {env for _, _, env in server.SETTING_SOURCES.values()}.isdisjoint(
        {"SERVER_METRICS", "SERVER_LOG_FORMAT"}
    )
    # Set, they would be quietly ignored: an operator who still sets one is told instead.
    for name in ("SERVER_METRICS", "SERVER_LOG_FORMAT"):
        with pytest.raises(server.SettingsError, match=f"^{name} is no longer a setting"):
            server.load_settings({name: "true"})
    # The environment holds much besides settings: a variable that is not close to a setting's
    # name is never an error.
    assert server.load_settings(
        {"SERVER_NAME": "x", "TOKEN_FOO_BAR_BAZ": "1"}
    ) == server.load_settings({})


def test_the_readme_names_every_removed_setting():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in server.REMOVED_SETTINGS)


# --------------------------------------------------------------------------
# What a newcomer copies from the docs, or mistypes, stops the server and says why

WEAK_SECRET_RULE = (
    "must be at least 32 random characters "
    "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
)
API_SECRET_WEAK = f"livekit.api_secret (LIVEKIT_API_SECRET) {WEAK_SECRET_RULE}"
AUTH_SECRET_WEAK = f"tokens.auth_secrets (TOKEN_AUTH_SECRETS): each {WEAK_SECRET_RULE}"
WEAK_SECRETS = [
    pytest.param("...", id="dots"),
    pytest.param("abc", id="short"),
    pytest.param("a" * 31 + "bcdefg", id="few-distinct"),
    pytest.param("x" * 64, id="one-character"),
    pytest.param("<32 or more random characters>", id="angle-placeholder"),
    pytest.param("<paste-a-secret-of-at-least-32-characters-here>", id="long-angle-placeholder"),
    pytest.param("change-me-change-me-change-me-change-me", id="changeme"),
    pytest.param("0123456789abcdef0123456789abcde", id="31-characters"),
]


@pytest.mark.parametrize("secret", WEAK_SECRETS)
def test_a_short_or_placeholder_api_secret_is_refused(secret):
    with pytest.raises(SettingsError) as caught:
        load_settings({"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": secret})
    assert str(caught.value) == API_SECRET_WEAK
    assert secret not in str(caught.value)


@pytest.mark.parametrize("secret", WEAK_SECRETS)
def test_a_short_or_placeholder_bearer_secret_is_refused(secret):
    with pytest.raises(SettingsError) as caught:
        load_settings({**KEYS, "TOKEN_AUTH_SECRETS": f"{LONG_AUTH} {secret}"})
    assert str(caught.value) == AUTH_SECRET_WEAK


def test_a_secret_of_32_random_characters_is_taken():
    secret = "0123456789abcdef0123456789abcdef"
    assert (
        load_settings({"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": secret}).api_secret == secret
    )
    assert load_settings({**KEYS, "TOKEN_AUTH_SECRETS": secret}).auth_secrets == {secret}


def test_the_config_example_with_its_placeholders_uncommented_stops_the_server(config):
    text = EXAMPLE.read_text(encoding="utf-8")
    for line in re.findall(r"^# ((?:auth_secrets|api_key|api_secret) = .*)$", text, re.MULTILINE):
        text = text.replace(f"# {line}\n", f"{line}\n")
    assert re.search(r"^auth_secrets = <", text, re.MULTILINE)
    with pytest.raises(SettingsError) as caught:
        load_settings(KEYS, config(text))
    assert str(caught.value).endswith(AUTH_SECRET_WEAK)


def test_the_command_exits_2_on_the_readme_placeholders():
    done = run_command(
        {"LIVEKIT_API_KEY": "...", "LIVEKIT_API_SECRET": "...", "TOKEN_AUTH_SECRETS": "..."}
    )
    assert done.returncode == 2, done.stderr
    assert logged_error(API_SECRET_WEAK) in done.stderr


def test_livekit_development_pair_given_explicitly_is_development_mode():
    settings = load_settings({"LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"})
    assert settings.dev_mode is True
    assert settings.host == "127.0.0.1"
    assert Settings(api_key="devkey", api_secret="secret").host == "127.0.0.1"


def test_the_development_secret_with_another_key_is_a_weak_secret():
    with pytest.raises(SettingsError) as caught:
        load_settings({"LIVEKIT_API_KEY": "APIkey", "LIVEKIT_API_SECRET": "secret"})
    assert str(caught.value) == API_SECRET_WEAK


@pytest.mark.parametrize(
    "name,meant",
    [
        ("TOKEN_AUTH_SECRET", "TOKEN_AUTH_SECRETS"),
        ("LIVEKIT_API_SECRETS", "LIVEKIT_API_SECRET"),
        ("SERVER_PROT", "SERVER_PORT"),
        ("LIVEKIT_SECRET", "LIVEKIT_API_SECRET"),
        ("CORS_ALLOWED_ORIGIN", "CORS_ALLOWED_ORIGINS"),
        ("TOKEN_ROOM", "TOKEN_ROOMS"),
    ],
)
def test_a_misspelled_variable_stops_the_server_naming_the_setting_meant(name, meant):
    with pytest.raises(SettingsError) as caught:
        load_settings({**KEYS, name: LONG_AUTH})
    assert str(caught.value) == f"{name} is not a setting; did you mean {meant}?"


@pytest.mark.parametrize(
    "name",
    [
        "SERVER_NAME",
        "SERVER_SOFTWARE",
        "SERVER_PROTOCOL",
        "SERVER_ADDR",
        "PATH",
        "HOME",
        "HOSTNAME",
        "PORT",
        "LANG",
        "PYTHONPATH",
        "GATEWAY_INTERFACE",
        "REMOTE_ADDR",
        "TOKEN",
        "LIVEKIT_HOST",
    ],
)
def test_variables_platforms_set_are_not_taken_for_misspelled_settings(name):
    assert load_settings({**KEYS, name: "x"}) == load_settings(KEYS)


def test_the_command_exits_2_on_a_misspelled_variable():
    done = run_command({**KEYS, "SERVER_HOST": "127.0.0.1", "TOKEN_AUTH_SECRET": LONG_AUTH})
    assert done.returncode == 2, done.stderr
    assert (
        logged_error("TOKEN_AUTH_SECRET is not a setting; did you mean TOKEN_AUTH_SECRETS?")
        in done.stderr
    )


def test_an_unknown_section_suggests_the_section_meant(config):
    path = config("[sevrer]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == f"{path}, line 1: unknown section [sevrer]; did you mean [server]?"


@pytest.mark.parametrize(
    "line,problem",
    [
        ('api_key = "APIk"', "livekit.api_key: remove the quotes (values are read as written)"),
        ("api_key = 'APIk'", "livekit.api_key: remove the quotes (values are read as written)"),
        (
            "url = wss://lk.example.com # ours",
            "livekit.url: a comment must be on a line of its own (# or ; after a value is read as part of it)",
        ),
        (
            "url = wss://lk.example.com ; ours",
            "livekit.url: a comment must be on a line of its own (# or ; after a value is read as part of it)",
        ),
    ],
    ids=["double-quotes", "single-quotes", "hash-comment", "semicolon-comment"],
)
def test_quotes_and_trailing_comments_in_the_config_file_name_file_line_and_cause(
    config, line, problem
):
    path = config(f"# mine\n[livekit]\n{line}\napi_secret = {SECRET}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == f"{path}, line 3: {problem}"


def test_a_port_with_a_trailing_comment_names_file_line_and_cause(config):
    path = config("[server]\nport = 6092 # the port\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == (
        f"{path}, line 2: server.port: a comment must be on a line of its own "
        "(# or ; after a value is read as part of it)"
    )


@pytest.mark.parametrize(
    "text,line,message",
    [
        (
            "[server]\nhost = ::1\nport = 70000\n",
            3,
            "server.port (SERVER_PORT) must be from 0 to 65535",
        ),
        (
            "[server]\n\nport = abc\n",
            3,
            "server.port must be a whole number of at most 9 ASCII digits",
        ),
        ("[livekit]\napi_key = k\napi_secret = short\n", 3, API_SECRET_WEAK),
        (
            "[tokens]\nrooms = a*b\n",
            2,
            'tokens.rooms (TOKEN_ROOMS) takes room names, or prefixes ending in "*"',
        ),
    ],
    ids=["range", "not-a-number", "weak-secret", "rooms"],
)
def test_a_bad_value_in_the_config_file_names_file_and_line(config, text, line, message):
    path = config(text)
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == f"{path}, line {line}: {message}"


def test_a_bad_value_from_the_environment_names_no_file(config):
    with pytest.raises(SettingsError) as caught:
        load_settings({"SERVER_PORT": "70000"}, config("[server]\nport = 6080\n"))
    assert str(caught.value) == "server.port (SERVER_PORT) must be from 0 to 65535"


WSGI_REFUSAL = (
    "development mode (LiveKit's public development key, used when LIVEKIT_API_KEY and "
    "LIVEKIT_API_SECRET are not set) under a WSGI server needs "
    "server.allow_dev_mode (SERVER_ALLOW_DEV_MODE)=true"
)
DEV_MODE_WSGI = DEV_MODE + "Where it listens is the WSGI server's choice: never expose it."


@pytest.mark.parametrize(
    "environ",
    [{}, {"LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"}],
    ids=["no-credentials", "development-pair"],
)
def test_development_mode_under_a_wsgi_server_is_refused_unless_allowed(caplog, environ):
    with pytest.raises(SettingsError) as caught:
        check_startup(load_settings(environ), wsgi_server=True)
    assert str(caught.value) == WSGI_REFUSAL
    with caplog.at_level(logging.WARNING, logger="livekit_token_server"):
        check_startup(load_settings({**environ, "SERVER_ALLOW_DEV_MODE": "true"}), wsgi_server=True)
    # Nothing about loopback or a port: the WSGI server alone knows where it listens.
    assert [record.getMessage() for record in caplog.records] == [DEV_MODE_WSGI, token_open()]


def test_under_a_wsgi_server_an_open_token_endpoint_is_always_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="livekit_token_server"):
        check_startup(load_settings({**KEYS, "SERVER_HOST": "127.0.0.1"}), wsgi_server=True)
    assert [record.getMessage() for record in caplog.records] == [token_open()]


def test_server_application_without_credentials_stops_with_the_message():
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **COVERAGE_ENV,
    }
    done = subprocess.run(
        [sys.executable, "-c", "import server; server.application"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode != 0
    assert logged_error(WSGI_REFUSAL) in done.stderr


def test_half_a_key_pair_in_the_config_file_names_file_and_line(config):
    path = config(f"[server]\nport = 1\n[livekit]\napi_secret = {SECRET}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings({}, path)
    assert str(caught.value) == (
        f"{path}, line 4: livekit.api_secret (LIVEKIT_API_SECRET) is set but livekit.api_key (LIVEKIT_API_KEY) is not"
    )


@pytest.mark.parametrize("url", ["localhost:7880", "ftp://lk.example.com", "wss://", "wss://a b"])
def test_a_livekit_url_that_is_not_a_websocket_or_http_url_is_refused(url):
    with pytest.raises(SettingsError) as caught:
        load_settings({**KEYS, "LIVEKIT_URL": url})
    assert (
        str(caught.value)
        == "livekit.url (LIVEKIT_URL) must be a ws://, wss://, http:// or https:// URL"
    )


@pytest.mark.parametrize(
    "path,hint",
    [("/etc/hostname/events.jsonl", ""), ("/sys/kernel/notes", " (make it writable by this user)")],
    ids=["not-a-directory", "not-writable"],
)
def test_an_event_file_error_gives_a_hint_only_where_one_fits(path, hint):
    if not os.path.exists(path.rsplit("/", 1)[0]) or (hint and not os.path.exists(path)):
        pytest.skip(f"{path} is not on this machine")
    with pytest.raises(SettingsError) as caught:
        check_startup(load_settings({**KEYS, "WEBHOOK_EVENT_FILE": path}))
    assert re.fullmatch(
        rf"webhook\.event_file \(WEBHOOK_EVENT_FILE\) cannot be opened: {re.escape(path)}: "
        rf"[A-Za-z ]+{re.escape(hint)}",
        str(caught.value),
    ), str(caught.value)


# --------------------------------------------------------------------------
# The settings of the token policy and of webhook delivery


@pytest.mark.parametrize(
    "rooms",
    [{"*-team"}, {"te*am"}, {"**"}, {"a*b*"}, {"lobby", "*x"}, set()],
    ids=["star-first", "star-inside", "two-stars", "two-stars-apart", "one-bad-of-two", "empty"],
)
def test_star_anywhere_but_the_end_is_a_settings_error(rooms):
    with pytest.raises(SettingsError) as info:
        app_settings(rooms=frozenset(rooms))
    assert (
        str(info.value) == 'tokens.rooms (TOKEN_ROOMS) takes room names, or prefixes ending in "*"'
    )


@pytest.mark.parametrize(
    "event_file", ["events.jsonl", "./events.jsonl", "var/lib/events.jsonl", "~/events.jsonl"]
)
def test_relative_event_file_is_a_settings_error(event_file):
    with pytest.raises(SettingsError) as info:
        app_settings(event_file=event_file)
    assert str(info.value) == "webhook.event_file (WEBHOOK_EVENT_FILE) must be an absolute path"


@pytest.mark.parametrize(
    "where,reason",
    [
        (lambda tmp: tmp, "Is a directory (give the path of a file, not a directory)"),
        (
            lambda tmp: tmp / "missing" / "events.jsonl",
            "No such file or directory (create its directory, writable by this user)",
        ),
    ],
    ids=["directory", "missing-directory"],
)
def test_check_startup_refuses_an_event_file_it_cannot_open(tmp_path, where, reason):
    path = str(where(tmp_path))
    with pytest.raises(SettingsError) as info:
        check_startup(app_settings(event_file=path))
    assert (
        str(info.value)
        == f"webhook.event_file (WEBHOOK_EVENT_FILE) cannot be opened: {path}: {reason}"
    )


def test_check_startup_accepts_an_event_file_it_can_open(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"kept\n")
    check_startup(app_settings(event_file=str(path)))
    assert path.read_bytes() == b"kept\n"


LONG_A, LONG_B, LONG_C = (
    "alpha-bearer-secret-0123456789-xyz",
    "bravo-bearer-secret-0123456789-xyz",
    "charlie-bearer-secret-0123456789-xyz",
)


@pytest.mark.parametrize(
    "variable,text,field,value",
    [
        ("TOKEN_AUTH_SECRETS", f"{LONG_A} {LONG_B}", "auth_secrets", frozenset({LONG_A, LONG_B})),
        (
            "TOKEN_AUTH_SECRETS",
            f" {LONG_A},{LONG_B} ,{LONG_C} ",
            "auth_secrets",
            frozenset({LONG_A, LONG_B, LONG_C}),
        ),
        ("TOKEN_ROOMS", "team-* lobby", "rooms", frozenset({"team-*", "lobby"})),
        ("TOKEN_ROOMS", "*", "rooms", frozenset({"*"})),
        ("TOKEN_CAN_PUBLISH", "false", "can_publish", False),
        ("TOKEN_CAN_SUBSCRIBE", "false", "can_subscribe", False),
        ("TOKEN_CAN_PUBLISH_DATA", "false", "can_publish_data", False),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "camera,microphone",
            "can_publish_sources",
            frozenset({"camera", "microphone"}),
        ),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "screen_share screen_share_audio",
            "can_publish_sources",
            frozenset({"screen_share", "screen_share_audio"}),
        ),
        ("TOKEN_RATE_PER_MINUTE", "0", "rate_per_minute", 0),
        ("TOKEN_RATE_PER_MINUTE", "1000000", "rate_per_minute", 1_000_000),
        ("TOKEN_RATE_BURST", "1", "rate_burst", 1),
        ("TOKEN_RATE_BURST", "1000000", "rate_burst", 1_000_000),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.0.0.0/8 192.168.1.1",
            "trusted_proxies",
            (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.1/32")),
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "fd00::/8",
            "trusted_proxies",
            (ipaddress.ip_network("fd00::/8"),),
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.1.2.3/8",
            "trusted_proxies",
            (ipaddress.ip_network("10.0.0.0/8"),),
        ),
        ("SERVER_TRUSTED_PROXIES", "", "trusted_proxies", ()),
        ("WEBHOOK_DEDUPE_SECONDS", "0", "dedupe_seconds", 0),
        ("WEBHOOK_DEDUPE_SECONDS", "604800", "dedupe_seconds", 604800),
        (
            "WEBHOOK_EVENT_FILE",
            "/var/lib/lk/events.jsonl",
            "event_file",
            "/var/lib/lk/events.jsonl",
        ),
        ("WEBHOOK_EVENT_FILE", "", "event_file", ""),
    ],
)
def test_setting_from_the_environment(variable, text, field, value):
    assert getattr(load_settings({**KEYS, variable: text}), field) == value


def test_defaults_of_the_policy_and_delivery_settings():
    loaded = load_settings(KEYS)
    expected = dict(
        auth_secrets=frozenset(),
        rooms=frozenset({"*"}),
        can_publish=True,
        can_publish_sources=frozenset(),
        can_subscribe=True,
        can_publish_data=True,
        rate_per_minute=300,
        rate_burst=60,
        trusted_proxies=(),
        dedupe_seconds=600,
        event_file="",
    )
    assert {field: getattr(loaded, field) for field in expected} == expected


@pytest.mark.parametrize(
    "variable,text,message",
    [
        ("TOKEN_CAN_PUBLISH", "no", "TOKEN_CAN_PUBLISH must be true or false"),
        ("TOKEN_CAN_SUBSCRIBE", "off", "TOKEN_CAN_SUBSCRIBE must be true or false"),
        ("TOKEN_CAN_PUBLISH_DATA", "0", "TOKEN_CAN_PUBLISH_DATA must be true or false"),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "camera,webcam",
            "tokens.can_publish_sources (TOKEN_CAN_PUBLISH_SOURCES) takes only: "
            "camera, microphone, screen_share, screen_share_audio",
        ),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            "CAMERA",
            "tokens.can_publish_sources (TOKEN_CAN_PUBLISH_SOURCES) takes only: "
            "camera, microphone, screen_share, screen_share_audio",
        ),
        (
            "TOKEN_RATE_PER_MINUTE",
            "1000001",
            "tokens.rate_per_minute (TOKEN_RATE_PER_MINUTE) must be from 0 to 1000000",
        ),
        (
            "TOKEN_RATE_PER_MINUTE",
            "1.5",
            "TOKEN_RATE_PER_MINUTE must be a whole number of at most 9 ASCII digits",
        ),
        ("TOKEN_RATE_BURST", "0", "tokens.rate_burst (TOKEN_RATE_BURST) must be from 1 to 1000000"),
        (
            "TOKEN_RATE_BURST",
            "1000001",
            "tokens.rate_burst (TOKEN_RATE_BURST) must be from 1 to 1000000",
        ),
        ("TOKEN_ROOMS", "", "TOKEN_ROOMS is set but lists nothing; remove it to get the default"),
        (
            "TOKEN_AUTH_SECRETS",
            "",
            "TOKEN_AUTH_SECRETS is set but lists nothing; remove it to get the default",
        ),
        (
            "TOKEN_CAN_PUBLISH_SOURCES",
            ",",
            "TOKEN_CAN_PUBLISH_SOURCES is set but lists nothing; remove it to get the default",
        ),
        (
            "TOKEN_ROOMS",
            "lobby te*am",
            'tokens.rooms (TOKEN_ROOMS) takes room names, or prefixes ending in "*"',
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.0.0.0/33",
            "SERVER_TRUSTED_PROXIES takes IP addresses or networks such as 10.0.0.0/8",
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "proxy.local",
            "SERVER_TRUSTED_PROXIES takes IP addresses or networks such as 10.0.0.0/8",
        ),
        (
            "SERVER_TRUSTED_PROXIES",
            "10.0.0.0/8,nope",
            "SERVER_TRUSTED_PROXIES takes IP addresses or networks such as 10.0.0.0/8",
        ),
        (
            "WEBHOOK_DEDUPE_SECONDS",
            "604801",
            "webhook.dedupe_seconds (WEBHOOK_DEDUPE_SECONDS) must be from 0 to 604800",
        ),
        (
            "WEBHOOK_DEDUPE_SECONDS",
            "1.5",
            "WEBHOOK_DEDUPE_SECONDS must be a whole number of at most 9 ASCII digits",
        ),
        (
            "WEBHOOK_EVENT_FILE",
            "events.jsonl",
            "webhook.event_file (WEBHOOK_EVENT_FILE) must be an absolute path",
        ),
    ],
)
def test_bad_setting_is_an_error_naming_it(variable, text, message):
    with pytest.raises(SettingsError) as info:
        load_settings({**KEYS, variable: text})
    assert str(info.value) == message


def test_bad_flag_in_the_config_file_names_the_key(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("[tokens]\ncan_publish = yes\n", encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load_settings(KEYS, str(path))
    assert str(info.value) == f"{path}, line 2: tokens.can_publish must be true or false"


def test_every_policy_and_delivery_setting_from_the_config_file(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(
        f"""
[server]
trusted_proxies = 10.0.0.0/8
[tokens]
auth_secrets = {AUTH_1} {AUTH_2}
rooms = team-*
can_publish = false
can_publish_sources = camera
can_subscribe = false
can_publish_data = false
rate_per_minute = 30
rate_burst = 10
[webhook]
dedupe_seconds = 60
event_file = {tmp_path / "events.jsonl"}
""",
        encoding="utf-8",
    )
    loaded = load_settings(KEYS, str(path))
    assert loaded == Settings(
        api_key="APIkey",
        api_secret=SECRET,
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
        auth_secrets=frozenset({AUTH_1, AUTH_2}),
        rooms=frozenset({"team-*"}),
        can_publish=False,
        can_publish_sources=frozenset({"camera"}),
        can_subscribe=False,
        can_publish_data=False,
        rate_per_minute=30,
        rate_burst=10,
        dedupe_seconds=60,
        event_file=str(tmp_path / "events.jsonl"),
    )


def test_settings_repr_shows_no_secret():
    loaded = load_settings(
        {
            **KEYS,
            "TOKEN_AUTH_SECRETS": f"{AUTH_1} {AUTH_2}",
        }
    )
    text = repr(loaded) + str(loaded)
    assert "rate_per_minute=300" in text  # the repr is there, just without secrets
    for secret in [SECRET, AUTH_1, AUTH_2]:
        assert secret not in text
    assert "auth_secrets" not in text


SHORT = "short-secret-of-31-characters-x"


def test_a_short_bearer_secret_is_refused_in_development_mode_too():
    # Development mode exempts only LiveKit's public pair, never a bearer secret.
    with pytest.raises(SettingsError) as info:
        load_settings({"TOKEN_AUTH_SECRETS": SHORT})
    assert str(info.value).startswith(
        "tokens.auth_secrets (TOKEN_AUTH_SECRETS): each must be at least 32 "
    )
    assert SHORT not in str(info.value)
