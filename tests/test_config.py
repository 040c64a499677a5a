from pathlib import Path

import pytest

from tutorsrv.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_file_documents_the_defaults() -> None:
    # config.toml is the documented reference; it must not drift from the code's defaults.
    assert load_config(ROOT / "config.toml", environ={}) == Config()


def test_environment_overrides_file_with_typed_values(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[engine]\nmax_sessions = 3\npublic_url = "https://a.example"\n')
    config = load_config(
        path,
        environ={
            "TUTORSRV_ENGINE_MAX_SESSIONS": "25",
            "TUTORSRV_ENGINE_SESSION_TIMEOUT_SECONDS": "90",
            "TUTORSRV_LLM_OUT_OF_PROCESS": "false",
            "TUTORSRV_SERVER_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "TUTORSRV_LLM_BACKEND": "scripted",
        },
    )
    assert config.engine.max_sessions == 25
    assert config.engine.session_timeout_seconds == 90.0
    assert config.llm.out_of_process is False
    assert config.server.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    assert config.engine.public_url == "https://a.example"  # from the file, not overridden
    assert config.llm.backend == "scripted"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[engine]\nmax_sessions = 7\n")
    config = load_config(environ={"TUTORSRV_CONFIG": str(path)})
    assert config.engine.max_sessions == 7


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[engine]\nmax_sesions = 3\n", "max_sesions"),
        ("[enigne]\napi_key = 'x'\n", "enigne"),
        ("[engine]\nmax_sessions = 'ten'\n", "engine.max_sessions"),
        ("[engine]\nmax_sessions = 0\n", "engine.max_sessions"),
        ("[llm]\nout_of_process = 1\n", "llm.out_of_process"),
        ("[engine]\ntrust_forwarded_headers = true\n", "no longer a setting.*trusted_proxies"),
        ("[server]\ntrusted_proxies = ['nginx']\n", "server.trusted_proxies: 'nginx'"),
        ("[server]\ntrusted_proxies = ['10.0.0.0/33']\n", "server.trusted_proxies"),
        ("[engine]\npublic_url = 'engine.example'\n", "engine.public_url"),
        ("[engine]\napi_key = 'short'\n", "engine.api_key"),
        ("[llm]\nbackend = 'gpt'\n", "llm.backend"),
        ("[llm]\nmax_tokens = 4096\n", "llm.max_tokens"),
        ("server = 1\n", "server"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("TUTORSRV_ENGINE_MAX_SESSIONS", "many", "TUTORSRV_ENGINE_MAX_SESSIONS"),
        ("TUTORSRV_ENGINE_NOPE", "1", "unknown key 'nope'"),
        ("TUTORSRV_NOSECTION_KEY", "1", "TUTORSRV_NOSECTION_KEY"),
        ("TUTORSRV_LLM_OUT_OF_PROCESS", "maybe", "OUT_OF_PROCESS"),
        ("TUTORSRV_ENGINE_TRUST_FORWARDED_HEADERS", "true", "server.trusted_proxies"),
        ("TUTORSRV_ENGINE_SESSION_TIMEOUT_SECONDS", "-5", "engine.session_timeout_seconds"),
    ],
)
def test_bad_environment_values_name_the_setting(name: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(environ={name: value})


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"TUTORSRV_LLM_BACKEND": "vllm"}, "llm.model"),
        ({"TUTORSRV_LLM_BACKEND": "openai", "TUTORSRV_LLM_MODEL": "m"}, "llm.base_url"),
        ({"TUTORSRV_LLM_BACKEND": "openai", "TUTORSRV_LLM_BASE_URL": "http://h:1"}, "llm.model"),
    ],
)
def test_serving_backends_need_their_settings(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config(environ=environ)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", environ={})
