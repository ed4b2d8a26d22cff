"""The terminals' voice (firmware/apps/voice.py) with Debian's real espeak-ng.

WAVs are synthesized once and found again by another Voice and by two processes racing for the same
text; the activation prompts are real Mandarin WAVs (the phonemes espeak-ng chose are Mandarin, not
pinyin read as English), and the first lasts under the 3 s within which the second is due; the two
prompts said back to back reach the sound sink in order, the second starting after the first ended;
the queue bound drops the oldest prompt not yet started and never the one playing. Without espeak-ng
a voice to be heard does not start (one line naming the Debian package); an aplay that fails, or is
not installed, is logged once and the voice keeps going. The only stand-in is a fake `aplay` that
fails as aplay does without a sound card.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import wave

import pytest

from firmware.apps import voice as voice_module
from firmware.apps.voice import DEFAULT_RATE_WPM, MAX_TEXT_CHARS, QUEUE_MAX, Voice, VoiceUnavailable

ACTIVATING = "卡片激活中，请勿移开卡片"
ACTIVATED = "卡片激活成功"
SHORT = "好"

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="needs Debian's espeak-ng (make test installs it)")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One cache for the module: the prompts are synthesized once."""
    return str(tmp_path_factory.mktemp("voice-cache"))


def played(sink_dir):
    path = os.path.join(sink_dir, "played.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def cached_wavs(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".wav"))


def test_wav_is_synthesized_once_and_cached(tmp_path):
    cache = str(tmp_path / "cache")
    first = Voice(cache, None)
    path = first.wav_for(ACTIVATED)
    before = os.stat(path)
    assert first.generated == 1
    assert first.wav_for(ACTIVATED) == path and first.generated == 1
    # Another voice on the same cache (a restarted terminal) finds the file: espeak-ng does not run again.
    again = Voice(cache, None)
    assert again.wav_for(ACTIVATED) == path and again.generated == 0
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Nothing half-written is left beside it; the text as spoken names it.
    assert cached_wavs(cache) == [os.path.basename(path)]
    assert not [name for name in os.listdir(cache) if name.endswith(".tmp")]
    assert again.wav_for("  卡片激活\n成功 ") != path       # white space is part of what is said
    # Rate, voice (language) and text each make their own file.
    faster = Voice(cache, None, rate_wpm=DEFAULT_RATE_WPM + 40)
    english = Voice(cache, None, lang="en")
    assert english.voice_name == "en"
    assert len({path, faster.wav_for(ACTIVATED), english.wav_for("Card activated")}) == 3
    assert faster.duration_s(ACTIVATED) < first.duration_s(ACTIVATED)


def test_two_processes_synthesize_a_text_once(tmp_path):
    cache = str(tmp_path / "cache")
    script = textwrap.dedent("""
        import sys
        from firmware.apps.voice import Voice
        voice = Voice(sys.argv[1], None)
        voice.wav_for("两台终端同时准备这句话")
        print(voice.generated)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    children = [subprocess.Popen([sys.executable, "-c", script, cache], cwd=root, stdout=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    counts = [int(child.communicate(timeout=60)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    assert sorted(counts) == [0, 1]
    assert len(cached_wavs(cache)) == 1


def test_activation_prompts_are_mandarin_wavs(cache_dir):
    voice = Voice(cache_dir, None)
    assert voice.voice_name in ("cmn-latn-pinyin", "cmn")
    for text in (ACTIVATING, ACTIVATED):
        with wave.open(voice.wav_for(text), "rb") as wav:
            assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
            assert wav.getframerate() >= 16000
            samples = wav.readframes(wav.getnframes())
        peak = max(abs(int.from_bytes(samples[i:i + 2], "little", signed=True))
                   for i in range(0, len(samples), 2))
        assert peak > 3000                              # sound, not silence
        assert voice.duration_s(text) > 0.5
    # The first prompt must have ended when the second is due, at most 3 s after the tap: at 240 wpm
    # it lasts 2.34 s and the second 1.34 s (Debian bookworm's espeak-ng 1.51).
    assert voice.duration_s(ACTIVATING) < 3.0
    assert voice.duration_s(ACTIVATED) < voice.duration_s(ACTIVATING)
    # Mandarin phonemes with tones, not pinyin spelled out as English words ("ka three pian four").
    phonemes = subprocess.run([voice.espeak, "-q", "-x", "-v", voice.voice_name, "-s", str(voice.rate_wpm),
                               "--", ACTIVATING], capture_output=True, text=True, check=True).stdout
    assert "(en)" not in phonemes and "51" in phonemes, phonemes


def test_prompts_play_in_order_one_after_the_other(cache_dir, tmp_path):
    sink = str(tmp_path / "sink")
    with Voice(cache_dir, sink) as voice:
        assert voice.prepare([ACTIVATING, ACTIVATED]).keys() == {ACTIVATING, ACTIVATED}
        assert voice.say(ACTIVATING) and voice.say(ACTIVATED)
        assert not voice.wait_idle(0)                   # say() returned while the first plays
        assert voice.wait_idle(15)
        records = played(sink)
        assert [r["text"] for r in records] == [ACTIVATING, ACTIVATED]
        assert [r["n"] for r in records] == [1, 2]
        first, second = records
        assert second["start_s"] >= first["end_s"]      # queued, never cut off
        for record, text in zip(records, (ACTIVATING, ACTIVATED)):
            assert record["duration_s"] == pytest.approx(voice.duration_s(text), abs=1e-5)
            assert record["end_s"] == pytest.approx(record["start_s"] + record["duration_s"], abs=1e-5)
            with open(os.path.join(sink, record["wav"]), "rb") as heard, open(voice.wav_for(text), "rb") as wav:
                assert heard.read() == wav.read()
        assert voice.played == 2 and voice.dropped == 0 and voice.failures == 0
        assert sorted(os.listdir(sink)) == sorted([r["wav"] for r in records] + ["played.jsonl"])
    # A later voice on the same sink numbers on.
    with Voice(cache_dir, sink) as later:
        later.say(SHORT)
        assert later.wait_idle(10)
    assert [r["n"] for r in played(sink)] == [1, 2, 3]


def test_a_full_queue_drops_the_oldest_not_yet_started(cache_dir, tmp_path):
    sink = str(tmp_path / "sink")
    voice = Voice(cache_dir, sink)
    voice.prepare([SHORT])
    assert voice.say(SHORT)
    wait_for(lambda: len(played(sink)) == 1)            # playing now
    texts = ["第%d句" % i for i in range(QUEUE_MAX + 2)]
    for text in texts:
        assert voice.say(text)
    assert voice.pending() == texts[2:]
    assert voice.dropped == 2
    voice.close()                                       # the one playing ends; the rest is discarded
    assert time.monotonic() >= played(sink)[0]["end_s"]
    assert [r["text"] for r in played(sink)] == [SHORT]
    assert not voice.say(SHORT) and voice.pending() == []


def test_text_is_text(cache_dir, tmp_path):
    voice = Voice(cache_dir, None)
    # Never a shell, never an option: this is spoken, nothing runs.
    odd = "-h; touch %s $(touch %s)" % (tmp_path / "a", tmp_path / "b")
    assert voice.duration_s(odd) > 1.0
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    long_text = "一" * (MAX_TEXT_CHARS + 50)
    assert voice.wav_for(long_text) == voice.wav_for("一" * MAX_TEXT_CHARS)
    with pytest.raises(ValueError):
        voice.wav_for(" \n ")
    assert not Voice(cache_dir, str(tmp_path / "sink")).say("\x00\n")
    assert not voice.say(ACTIVATED)                     # silent


def test_missing_espeak_ng_stops_a_voice_to_be_heard(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for sink in ("aplay", str(tmp_path / "sink")):
        with pytest.raises(VoiceUnavailable) as raised:
            Voice(str(tmp_path / "cache"), sink)
        message = str(raised.value)
        assert "\n" not in message
        assert message.index("找不到 espeak-ng") < message.index("espeak-ng not found")
        assert "Debian" in message and "espeak-ng" in message
    silent = Voice(str(tmp_path / "cache"), "off")      # a silent voice starts all the same
    assert not silent.say(ACTIVATED)
    assert silent.prepare([ACTIVATED]) == {}
    with pytest.raises(VoiceUnavailable):
        silent.wav_for(ACTIVATED)


def test_failing_aplay_is_logged_once_and_the_terminal_goes_on(cache_dir, tmp_path, monkeypatch, capfd):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "aplay-calls"
    (fake / "aplay").write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "$@" >> %s
        echo "aplay: main:831: audio open error: No such file or directory" >&2
        exit 1
    """ % calls))
    (fake / "aplay").chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (fake, os.pathsep, os.environ["PATH"]))
    voice = Voice(cache_dir, "aplay")
    assert voice.aplay == str(fake / "aplay")
    voice.prepare([ACTIVATING, ACTIVATED])
    assert voice.say(ACTIVATING) and voice.say(ACTIVATED)
    assert voice.wait_idle(10)
    assert voice.say(ACTIVATED) and voice.wait_idle(10)
    assert voice.failures == 3 and voice.played == 0
    arguments = [line.split() for line in calls.read_text().splitlines()]
    assert arguments == [["-q", voice.wav_for(ACTIVATING)], ["-q", voice.wav_for(ACTIVATED)],
                         ["-q", voice.wav_for(ACTIVATED)]]
    voice.close()
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audio open error" in err[0] and "aplay" in err[0]


def test_missing_aplay_is_logged_once(cache_dir, tmp_path, monkeypatch, capfd):
    only_espeak = tmp_path / "bin"
    only_espeak.mkdir()
    os.symlink(shutil.which("espeak-ng"), only_espeak / "espeak-ng")
    monkeypatch.setenv("PATH", str(only_espeak))
    with Voice(cache_dir, "aplay") as voice:
        assert voice.aplay is None
        assert voice.say(SHORT) and voice.say(SHORT) and voice.wait_idle(10)
        assert voice.failures == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "alsa-utils" in err[0]


def test_bad_arguments():
    with pytest.raises(ValueError):
        Voice("cache", None, lang="fr")
    with pytest.raises(ValueError):
        Voice("cache", None, rate_wpm=10)
    assert voice_module.clean_text("a\tb\x07c") == "a b c"
