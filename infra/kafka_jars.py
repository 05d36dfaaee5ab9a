"""The Kafka broker's jars, fetched once from Maven Central into ``settings.kafka_cache_dir``.

Layout: ``<kafka_cache_dir>/kafka-<version>/{pom.xml,libs/,libs/.complete}``. The libs folder
is filled in a temporary sibling and renamed when Maven succeeds, then ``.complete`` (holding
the pom's hash) is written; a missing marker or a changed pom means "fetch again". Needs
``mvn`` and network access to Maven Central (or a mirror in ``~/.m2/settings.xml``) only the
first time; about 10 s with a warm ``~/.m2``, longer cold.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

from infra.common import InfraError, Say, say
from infra.procs import file_lock
from skewscope.config import Settings

MARKER = ".complete"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MAVEN_TIMEOUT_S = 900


def kafka_home(settings: Settings) -> Path:
    """Cache folder of this Kafka version."""
    return settings.kafka_cache_dir / f"kafka-{settings.kafka_version}"


def libs_dir(settings: Settings) -> Path:
    """Folder whose ``*`` is the broker's class path."""
    return kafka_home(settings) / "libs"


def render_pom(settings: Settings) -> str:
    """The Maven project listing the broker's runtime dependencies for settings.kafka_version."""
    template = resources.files("infra").joinpath("kafka-runtime.pom.xml").read_text()
    return template.replace("@KAFKA_VERSION@", settings.kafka_version)


def libs_ready(settings: Settings) -> bool:
    """True when the libs folder is complete for the current pom (or marked ``manual``)."""
    libs = libs_dir(settings)
    try:
        mark = (libs / MARKER).read_text().strip()
    except OSError:
        return False
    expected = hashlib.sha256(render_pom(settings).encode()).hexdigest()
    main_jar = libs / f"kafka_2.13-{settings.kafka_version}.jar"
    return mark in {expected, "manual"} and main_jar.is_file()


def ensure_kafka_libs(settings: Settings, log: Say = say) -> Path:
    """Return the libs folder, downloading the jars with Maven first when it is not complete."""
    if libs_ready(settings):
        return libs_dir(settings)
    home = kafka_home(settings)
    with file_lock(home / ".lock"):
        if libs_ready(settings):  # another process finished it while we waited
            return libs_dir(settings)
        _fetch(settings, home, log)
    return libs_dir(settings)


def _fetch(settings: Settings, home: Path, log: Say) -> None:
    libs = libs_dir(settings)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError(
            f"Maven is needed once to download the Kafka {settings.kafka_version} jars "
            f"(apt-get install maven). Alternatively copy the libs/ folder of a Kafka "
            f"{settings.kafka_version} binary release to {libs} and write 'manual' into "
            f"{libs / MARKER}; or set KAFKA_BOOTSTRAP to an existing broker"
        )
    pom_text = render_pom(settings)
    pom = home / "pom.xml"
    pom.write_text(pom_text)
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    log(f"fetching Kafka {settings.kafka_version} jars from Maven Central into {libs} ...")
    started = time.monotonic()
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(
            f"Maven did not finish within {MAVEN_TIMEOUT_S} s fetching the Kafka jars; check "
            "network access to repo.maven.apache.org (or a mirror in ~/.m2/settings.xml)"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise InfraError(
            f"Maven failed ({proc.returncode}) fetching the Kafka {settings.kafka_version} jars; "
            "check network access to repo.maven.apache.org (or a mirror in "
            f"~/.m2/settings.xml) and that version {settings.kafka_version} exists.\n"
            f"command: {' '.join(cmd)}\n{tail}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (libs / MARKER).write_text(hashlib.sha256(pom_text.encode()).hexdigest() + "\n")
    count = sum(1 for _ in libs.glob("*.jar"))
    log(f"fetched {count} jars in {time.monotonic() - started:.1f} s")
