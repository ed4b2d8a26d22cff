"""The terminals' voice: Mandarin (or English) prompts spoken by espeak-ng, cached as WAV, played in order.

A prompt is synthesized once by Debian's `espeak-ng` into a WAV file under the cache directory, named
by a hash of (text, espeak-ng voice, rate, espeak-ng version); a new espeak-ng or another rate makes
new files, never stale ones. The file is written to a temporary name, flushed and renamed into place,
under a lock file in the cache directory, so a text is synthesized at most once even when several
processes share the cache, and a reader never sees half a WAV. A terminal calls `prepare()` at start-up
so that its first tap does not wait for synthesis.

Where the sound goes (`sink`):
    "aplay"        the device's sound card: `aplay -q <wav>` (Debian's alsa-utils), one prompt at a time
    None / "off"   silent: say() does nothing
    a directory    a sound sink for tests: each prompt played is copied there as NNNN-<hash>.wav and
                   described by one JSON line appended to played.jsonl: {"n", "text", "wav", "start_s",
                   "end_s", "duration_s"} on time.monotonic(); the player takes the prompt's real
                   duration, as a speaker does, so order and timing are a speaker's

Why queued. The activation unit says «卡片激活中，请勿移开卡片» at the tap and «卡片激活成功» when done,
at most 3 s later. A prompt cut off in the middle tells the cardholder nothing, so prompts are never
interrupted: say() puts the text on a queue and returns at once; one player thread speaks them in order,
each to its end before the next starts. The queue is bounded (QUEUE_MAX): when it is full, the oldest
prompt not yet started is dropped and counted in `dropped`; the one playing always finishes.

The rate is chosen so that the first prompt ends before the second is due. Measured with Debian
bookworm's espeak-ng 1.51, voice cmn-latn-pinyin, at DEFAULT_RATE_WPM = 240 (22,050 Hz mono WAVs):
    «卡片激活中，请勿移开卡片»   2.34 s (speech ends at 2.18 s): 11 syllables, about 4.7 a second
    «卡片激活成功»               1.34 s
    «卡片已激活»                 1.11 s
(English at the same rate: "Activating the card: keep it in place" 1.91 s.) At espeak-ng's default
175 the first prompt lasts 3.48 s, longer than the activation itself.

Which Mandarin voice. espeak-ng's Mandarin dictionary turns characters into tone-numbered pinyin
("ka3 pian4"). In espeak-ng 1.51 (Debian bookworm) the voice `cmn` ("latin as English") then reads that
pinyin as English words, "ka three pian four" (espeak-ng issue #1236, rules rewritten upstream later);
`cmn-latn-pinyin` uses the same dictionary and speaks it as Mandarin. So lang="zh" takes
cmn-latn-pinyin when espeak-ng has it and `cmn` otherwise; lang="en" takes `en`.

Failures. Without espeak-ng, a voice that is to be heard cannot start: the constructor raises
VoiceUnavailable with a one-line message naming the Debian package (a silent voice starts anyway).
A sound card that is missing or fails (aplay exits non-zero, or aplay is not installed) is logged once
on stderr and the terminal carries on silently: a speaker must never stop a terminal. Nothing raised
while playing leaves the player thread.

No text reaches a shell: espeak-ng runs from an argument list, the text after `--` (a text starting
with "-" is text, not an option), with control characters turned to spaces and at most MAX_TEXT_CHARS
characters.
"""
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave

DEFAULT_RATE_WPM = 240          # espeak-ng -s: see the measured durations above
MIN_RATE_WPM = 80               # espeak-ng's own limits
MAX_RATE_WPM = 450
MAX_TEXT_CHARS = 200
QUEUE_MAX = 8
# espeak-ng voices for each language, the first one espeak-ng has is used (see the module text).
VOICES = {"zh": ("cmn-latn-pinyin", "cmn"), "en": ("en",)}
SILENT_SINKS = (None, "", "off")
PLAYED_FILE = "played.jsonl"
LOCK_FILE = ".synthesis.lock"
ESPEAK_TIMEOUT_S = 30.0         # one prompt of MAX_TEXT_CHARS takes well under a second to synthesize
APLAY_GRACE_S = 5.0             # aplay may take this much longer than the sound before it is stopped
CLOSE_TIMEOUT_S = 10.0

ESPEAK_MISSING = ("语音不可用：找不到 espeak-ng，请安装 Debian 软件包 espeak-ng（或不用语音：--voice off）"
                  " / voice unavailable: espeak-ng not found; install the Debian package espeak-ng"
                  " (or run without voice: --voice off)")
APLAY_MISSING = ("语音无法播放：找不到 aplay（Debian 软件包 alsa-utils），终端继续工作但不出声"
                 " / cannot play voice prompts: aplay not found (Debian package alsa-utils);"
                 " the terminal carries on silently")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s+")


class VoiceError(Exception):
    """A prompt could not be synthesized."""


class VoiceUnavailable(VoiceError):
    """espeak-ng (or a voice for the language) is missing: the message is one line, Chinese then English."""


def clean_text(text):
    """The text as spoken: control characters and runs of white space made one space, at most
    MAX_TEXT_CHARS characters."""
    text = _SPACES.sub(" ", _CONTROL.sub(" ", str(text))).strip()
    return text[:MAX_TEXT_CHARS].rstrip()


def wav_duration_s(path):
    """Seconds of sound in a WAV file, from its header (raises wave.Error or OSError when not a WAV)."""
    with wave.open(path, "rb") as wav:
        rate = wav.getframerate()
        if rate <= 0:
            raise wave.Error("frame rate %d" % rate)
        return wav.getnframes() / float(rate)


def _valid_wav(path):
    try:
        return wav_duration_s(path) > 0
    except (OSError, EOFError, wave.Error):
        return False


def _probe_espeak(espeak):
    """(version, names of the voices it has) of an espeak-ng binary; raises VoiceUnavailable."""
    try:
        version = subprocess.run([espeak, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=ESPEAK_TIMEOUT_S)
        voices = subprocess.run([espeak, "--voices"], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=ESPEAK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as error:
        raise VoiceUnavailable("语音不可用：espeak-ng 无法运行 / voice unavailable: espeak-ng does not run: %s"
                               % error)
    if version.returncode != 0 or voices.returncode != 0:
        detail = (version.stderr or voices.stderr or "exit status %d" % (version.returncode or voices.returncode))
        raise VoiceUnavailable("语音不可用：espeak-ng 无法运行 / voice unavailable: espeak-ng does not run: %s"
                               % detail.strip().splitlines()[0])
    # "eSpeak NG text-to-speech: 1.51  Data at: /usr/lib/..."
    match = re.search(r"text-to-speech:\s*(\S+)", version.stdout)
    number = match.group(1) if match else version.stdout.strip()
    names = set()
    for line in voices.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            names.add(fields[1].lower())
        names.update(name.lower() for name in re.findall(r"\(([\w-]+) \d+\)", line))
    return number, names


class Voice:
    """Speaks prompts through espeak-ng and a sink ("aplay", None/"off", or a sink directory).

    say() never blocks; prompts play one after the other on a daemon thread, each to its end.
    Counters: generated (WAVs this object synthesized), played, dropped (queue full), failures (playing).
    """

    def __init__(self, cache_dir, sink, lang="zh", rate_wpm=DEFAULT_RATE_WPM, queue_max=QUEUE_MAX):
        if lang not in VOICES:
            raise ValueError("unknown voice language %r (expected one of %s)" % (lang, ", ".join(VOICES)))
        if isinstance(rate_wpm, bool) or not isinstance(rate_wpm, int) \
                or not MIN_RATE_WPM <= rate_wpm <= MAX_RATE_WPM:
            raise ValueError("rate_wpm must be an integer from %d to %d, not %r"
                             % (MIN_RATE_WPM, MAX_RATE_WPM, rate_wpm))
        if queue_max < 1:
            raise ValueError("queue_max must be at least 1")
        self.cache_dir = os.path.abspath(cache_dir)
        self.lang = lang
        self.rate_wpm = rate_wpm
        self.queue_max = queue_max
        if sink in SILENT_SINKS:
            self.mode, self.sink_dir = "off", None
        elif sink == "aplay":
            self.mode, self.sink_dir = "aplay", None
        else:
            self.mode, self.sink_dir = "sink", os.path.abspath(os.fspath(sink))
        self.generated = self.played = self.dropped = self.failures = 0
        self.espeak = shutil.which("espeak-ng")
        self.espeak_version = self.voice_name = self._unavailable = None
        try:
            if self.espeak is None:
                raise VoiceUnavailable(ESPEAK_MISSING)
            self.espeak_version, names = _probe_espeak(self.espeak)
            self.voice_name = next((name for name in VOICES[lang] if name in names), None)
            if self.voice_name is None:
                raise VoiceUnavailable("语音不可用：espeak-ng 没有 %s 语音（Debian 软件包 espeak-ng-data）"
                                       " / voice unavailable: espeak-ng has no %s voice (Debian package"
                                       " espeak-ng-data)" % ("/".join(VOICES[lang]), "/".join(VOICES[lang])))
        except VoiceUnavailable as error:
            if self.mode != "off":
                raise
            self.espeak, self._unavailable = None, str(error)   # silent: wav_for() raises it
        self.aplay = shutil.which("aplay") if self.mode == "aplay" else None
        self._next_n = 1
        if self.mode == "sink":
            os.makedirs(self.sink_dir, exist_ok=True)
            with contextlib.suppress(FileNotFoundError), \
                    open(os.path.join(self.sink_dir, PLAYED_FILE), encoding="utf-8") as played:
                self._next_n += sum(1 for line in played if line.strip())
        self._paths = {}                    # key -> cached WAV path, checked once by this object
        self._durations = {}                # key -> seconds
        self._synth_lock = threading.Lock()
        self._logged = set()
        self._queue = collections.deque()
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = None
        if self.mode != "off":
            self._thread = threading.Thread(target=self._player, name="voice", daemon=True)
            self._thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    # -- synthesis -------------------------------------------------------------------------------

    def key(self, text):
        """The cache name of a text: a hash of (text as spoken, voice, rate, espeak-ng version)."""
        blob = json.dumps([clean_text(text), self.voice_name, self.rate_wpm, self.espeak_version],
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]

    def wav_for(self, text):
        """The path of the WAV speaking `text`, synthesized the first time (by any process sharing the
        cache). Raises ValueError for an empty text, VoiceUnavailable without espeak-ng, VoiceError when
        espeak-ng fails."""
        text = clean_text(text)
        if not text:
            raise ValueError("nothing to say")
        if self.espeak is None:
            raise VoiceUnavailable(self._unavailable)
        key = self.key(text)
        with self._synth_lock:
            path = self._paths.get(key)
            if path is not None:
                return path
            path = os.path.join(self.cache_dir, key + ".wav")
            if not _valid_wav(path):
                os.makedirs(self.cache_dir, exist_ok=True)
                # One lock file for the cache: another process synthesizing the same text is waited for,
                # then its file is found here.
                with open(os.path.join(self.cache_dir, LOCK_FILE), "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    try:
                        if not _valid_wav(path):
                            self._synthesize(text, path)
                            self.generated += 1
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)
            self._durations[key] = wav_duration_s(path)
            self._paths[key] = path
            return path

    def _synthesize(self, text, path):
        fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=self.cache_dir)
        os.close(fd)
        try:
            try:
                done = subprocess.run([self.espeak, "-v", self.voice_name, "-s", str(self.rate_wpm), "-w", temp,
                                       "--", text], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, timeout=ESPEAK_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as error:
                raise VoiceError("语音合成失败 / speech synthesis failed: %s" % error)
            if done.returncode != 0 or not _valid_wav(temp):
                detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
                raise VoiceError("语音合成失败 / speech synthesis failed (espeak-ng exit status %d%s): %r"
                                 % (done.returncode, ", " + detail[0] if detail else ", no sound", text))
            with open(temp, "rb") as written:   # on disk before the name says it is complete
                os.fsync(written.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def prepare(self, texts):
        """Synthesize ahead (at start-up): {text: seconds} for each text ready. A text that cannot be
        synthesized is logged once on stderr and left out. A silent voice prepares nothing."""
        ready = {}
        if self.mode == "off":
            return ready
        for text in texts:
            try:
                self.wav_for(text)
                ready[text] = self.duration_s(text)
            except (VoiceError, ValueError, OSError) as error:
                self._log_once("synthesis", str(error))
        return ready

    def duration_s(self, text):
        """Seconds the prompt lasts, from its WAV header (synthesizing it if needed)."""
        key = self.key(text)
        if key not in self._durations:
            self.wav_for(text)
        return self._durations[key]

    # -- the queue -------------------------------------------------------------------------------

    def say(self, text):
        """Queue a prompt after those queued already and return at once. False when not queued (a
        silent or closed voice, an empty text). A full queue drops its oldest prompt not yet started."""
        text = clean_text(text)
        if self.mode == "off" or not text:
            return False
        with self._cond:
            if self._closed:
                return False
            while len(self._queue) >= self.queue_max:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(text)
            self._cond.notify_all()
        return True

    def pending(self):
        """The prompts queued and not yet started, oldest first."""
        with self._cond:
            return list(self._queue)

    def wait_idle(self, timeout_s=None):
        """Wait until every queued prompt has been played to its end: True, or False at the timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s=CLOSE_TIMEOUT_S):
        """Stop: prompts not yet started are discarded, the one playing ends (waited for at most
        timeout_s). Call wait_idle() first to hear everything queued."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    # -- the player ------------------------------------------------------------------------------

    def _player(self):
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                text = self._queue.popleft()
                self._busy = True
            try:
                self._play(text)
            except Exception as error:      # nothing stops the voice, nor the terminal
                self.failures += 1
                self._log_once("play", "语音播放出错 / voice prompt failed: %s: %s"
                               % (type(error).__name__, error))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _play(self, text):
        try:
            path = self.wav_for(text)
        except VoiceError as error:
            self._log_once("synthesis", str(error))
            return
        duration = self._durations[self.key(text)]
        if self.mode == "sink":
            self._play_to_sink(text, path, duration)
        else:
            self._play_aplay(path, duration)

    def _play_to_sink(self, text, path, duration):
        n = self._next_n
        self._next_n += 1
        start = time.monotonic()
        name = "%04d-%s.wav" % (n, os.path.basename(path)[:-len(".wav")])
        target = os.path.join(self.sink_dir, name)
        shutil.copyfile(path, target + ".tmp")
        os.replace(target + ".tmp", target)
        end = start + duration
        record = {"n": n, "text": text, "wav": name, "start_s": round(start, 6), "end_s": round(end, 6),
                  "duration_s": round(duration, 6)}
        with open(os.path.join(self.sink_dir, PLAYED_FILE), "a", encoding="utf-8") as played:
            played.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.played += 1
        # The sink takes the time a speaker takes: the next prompt starts after this one has ended.
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(left)

    def _play_aplay(self, path, duration):
        if self.aplay is None:
            self.failures += 1
            self._log_once("aplay", APLAY_MISSING)
            return
        try:
            done = subprocess.run([self.aplay, "-q", path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=duration + APLAY_GRACE_S)
        except (OSError, subprocess.SubprocessError) as error:
            detail = str(error)
        else:
            if done.returncode == 0:
                self.played += 1
                return
            # aplay's own reason comes last ("aplay: main:831: audio open error: ..."), after ALSA's notes
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = "aplay exit status %d%s" % (done.returncode, ": " + lines[-1] if lines else "")
        self.failures += 1
        self._log_once("aplay", "语音无法播放，终端继续工作但不出声 / cannot play voice prompts, the terminal "
                                "carries on silently: %s" % detail)

    def _log_once(self, kind, line):
        if kind in self._logged:
            return
        self._logged.add(kind)
        try:
            print(line.replace("\n", " "), file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
