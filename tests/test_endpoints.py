"""A misbehaving endpoint (a web page where an API should be) gets one line, never a traceback:
the agent's check and stream, `nanocode run`, and `evals agentic --base-url`."""

import subprocess

import pytest

from agent.backend import BackendError, OpenAIBackend
from nanocode.common import InputError
from nanocode.spec import load_tools
from tests.conftest import BIN
from tests.scripted_server import ScriptedServer


def test_a_web_page_instead_of_the_models_list_is_one_line():
    with ScriptedServer(html_models=True) as server:
        with pytest.raises(InputError, match=r"is not an OpenAI-compatible API: GET /models answered "
                                             r"200 with text/html: '<html><body><h1>Welcome to nginx"):
            OpenAIBackend(server.base_url).check()


def test_a_web_page_instead_of_a_stream_is_a_backend_error():
    with ScriptedServer([{"html": True}]) as server:
        backend = OpenAIBackend(server.base_url)
        backend.check()
        with pytest.raises(BackendError, match=r"did not stream: POST /chat/completions answered 200 with text/html"):
            list(backend.stream([{"role": "user", "content": "hi"}], load_tools()))


@pytest.mark.parametrize("command", [["nanocode", "run", "hi", "--base-url"],
                                     ["evals", "agentic", "--limit", "1", "--base-url"]])
def test_the_clis_say_it_in_one_line(command, tmp_path):
    with ScriptedServer(html_models=True) as server:
        r = subprocess.run([str(BIN / command[0]), *command[1:], server.base_url, "--workspace"
                            if command[0] == "nanocode" else "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {server.base_url} is not an OpenAI-compatible API")
