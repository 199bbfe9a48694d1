"""Shared by scripts/bench-agent and scripts/bench-journal: paths, the 1080p sample file,
/proc readings, kvs-local start-up and the agent's Prometheus metrics."""

import os
import re
import subprocess
import sys
import urllib.request

CACHE = os.environ.get("KVS_EDGE_CACHE", os.path.expanduser("~/.cache/kvs-edge"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))
RELEASE = os.path.join(TARGET, "release")


def build_release():
    subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], check=True)


def cached_sample(name, what, pipeline):
    """The sample file `name`, cached under ~/.cache/kvs-edge/bench: encoded once by
    `gst-launch-1.0 pipeline(out)`, whose arguments write the file `out`."""
    path = os.path.join(CACHE, "bench", name)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    print(f"bench: encoding {what} (once)…", file=sys.stderr)
    subprocess.run(["gst-launch-1.0", "-q"] + pipeline(path + ".tmp"), check=True)
    os.rename(path + ".tmp", path)
    return path


def sample_1080p():
    """40 s of 1080p30 H.264 at 4 Mbit/s (made once, cached). Noise, so that the encoder
    really spends the bitrate: a plain test pattern compresses to a twentieth of it."""
    return cached_sample("1080p30-4mbps-noise.mp4", "40 s of 1080p30 at 4 Mbit/s", lambda out: [
        "videotestsrc", "num-buffers=1200", "pattern=snow", "!",
         "video/x-raw,format=I420,width=1920,height=1080,framerate=30/1", "!",
         "x264enc", "speed-preset=ultrafast", "bitrate=4000", "key-int-max=30", "bframes=0", "!",
         "video/x-h264,profile=main", "!", "mp4mux", "!", "filesink", f"location={out}"])


def sample_1080p_h265_aac():
    """The same 40 s of 1080p30 noise as H.265 at 4 Mbit/s with a 48 kHz stereo AAC track at
    128 kbit/s: what most IP cameras sold today send (made once, cached)."""
    return cached_sample("1080p30-4mbps-noise-h265-aac.mp4", "40 s of 1080p30 H.265 + AAC", lambda out: [
        "videotestsrc", "num-buffers=1200", "pattern=snow", "!",
         "video/x-raw,format=I420,width=1920,height=1080,framerate=30/1", "!",
         "x265enc", "speed-preset=ultrafast", "bitrate=4000", "key-int-max=30", "option-string=bframes=0", "!",
         "h265parse", "!", "mp4mux", "name=mux", "!", "filesink", f"location={out}",
         "audiotestsrc", "num-buffers=1875", "wave=pink-noise", "samplesperbuffer=1024", "!",
         "audio/x-raw,rate=48000,channels=2", "!", "voaacenc", "bitrate=128000", "!", "aacparse", "!", "mux."])


def rss_mib(pid):
    status = open(f"/proc/{pid}/status").read()
    get = lambda key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) / 1024
    return get("VmRSS"), get("VmHWM")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_by_thread(pid):
    """{thread name: CPU seconds so far} of `pid`'s live threads (the scheduler's ns count,
    `schedstat`), numbers in names folded (`qtdemux0:sink` -> `qtdemux:sink`)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{task}/comm").read().strip()
            ns = int(open(f"/proc/{pid}/task/{task}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
        name = re.sub(r"\d+", "", comm)
        out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def context_switches(pid):
    """Context switches of every thread of `pid` so far (voluntary and not)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            status = open(f"/proc/{pid}/task/{task}/status").read()
        except OSError:
            continue  # the thread ended meanwhile
        total += sum(int(v) for v in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return total


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def start_kvs_local(data, bucket=None, tls=None):
    """kvs-local on a free loopback port; (process, URL). `tls`: (certificate, key) PEM
    files, for HTTPS."""
    args = [os.path.join(RELEASE, "kvs-local"), "--listen", "127.0.0.1:0", "--data-dir", data]
    if bucket:
        args += ["--bucket", bucket]
    if tls:
        args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, p.stdout.readline().split()[3]


def self_signed(directory):
    """A certificate and key for 127.0.0.1 (made with openssl): (certificate, key) paths."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1",
                        # A server's own certificate, not a CA: rustls refuses a CA as one.
                        "-addext", "basicConstraints=critical,CA:FALSE"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def metrics(port, camera=None):
    """{metric name: value}, summed over cameras (or of `camera` alone)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for m in re.finditer(r'kvs_edge_(\w+)\{camera="([^"]*)"[^}]*\} (\d+)', text):
        if camera is None or m.group(2) == camera:
            out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(3))
    return out
