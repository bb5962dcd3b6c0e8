"""A real Apache Kafka broker for the tests: one KRaft node (broker and
controller in one process) on the machine's JDK, from the
org.apache.kafka:kafka_2.13 jars that Maven resolves into the local
repository (~/.m2) from tests/integration/kafka/pom.xml.

    python3 tests/integration/kafka_broker.py [DIR]   # start, print the address, wait for ^C

Environment: PGW_JAVA (default: java on PATH), PGW_MVN (default: mvn).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ports import free_port

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"


def classpath():
    """The broker's classpath, resolved by Maven (offline once cached)."""
    out = Path(tempfile.mkstemp(prefix="kafka-cp-")[1])
    try:
        mvn = os.environ.get("PGW_MVN", "mvn")
        cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath",
               "-Dmdep.outputFile=" + str(out)]
        r = subprocess.run(cmd + ["-o"], capture_output=True, text=True)
        if r.returncode != 0:      # not cached yet: fetch from Maven Central
            r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("mvn could not resolve the Kafka jars:\n%s%s" % (r.stdout, r.stderr))
        cp = out.read_text().strip()
        if "kafka_2.13" not in cp:
            raise RuntimeError("the Kafka classpath from Maven lacks kafka_2.13: %r" % cp[:500])
        return cp
    finally:
        out.unlink(missing_ok=True)


class KafkaBroker:
    """One KRaft broker+controller. start() formats the storage once and
    starts the JVM; stop() and start() again keep the data (an outage)."""

    def __init__(self, base=None, port=None):
        self.base = Path(base or tempfile.mkdtemp(prefix="pgwarden-kafka-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.controller_port = free_port()
        self.logdir = self.base / "data"
        self.config = self.base / "server.properties"
        self.log_path = self.base / "broker.log"
        self.proc = None
        self.cp = None
        self.formatted = False

    @property
    def bootstrap(self):
        return "127.0.0.1:%d" % self.port

    def _java(self, main, *args, log=None):
        java = os.environ.get("PGW_JAVA", "java")
        cmd = [java, "-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-Djava.awt.headless=true",
               "-Dlog4j.configuration=file:" + str(self.base / "log4j.properties"),
               "-cp", self.cp, main] + list(args)
        return cmd

    def _write_config(self):
        self.config.write_text(f"""
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{self.controller_port}
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={self.logdir}
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=1000000
""")
        (self.base / "log4j.properties").write_text("""
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=%s
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%%d] %%p %%m (%%c)%%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
""" % (self.base / "kafka-log4j.log"))

    def start(self, timeout=90):
        if self.cp is None:
            self.cp = classpath()
        if not self.formatted:
            self._write_config()
            r = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t",
                                          str(uuid.uuid4()).replace("-", "")[:22], "-c",
                                          str(self.config), "--ignore-formatted"),
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError("kafka storage format failed:\n%s%s" % (r.stdout, r.stderr))
            self.formatted = True
        self.log_f = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(self.config)),
                                     stdout=self.log_f, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout):
        """Ready once a metadata request names this broker (the KRaft quorum is up)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the Kafka broker exited with %s:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                from confluent_kafka.admin import AdminClient
                md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
                if md.brokers:
                    return
            except Exception as e:   # not up yet
                last = e
            time.sleep(0.3)
        raise TimeoutError("the Kafka broker was not ready within %ss (%s):\n%s"
                           % (timeout, last, self.log_tail()))

    def create_topic(self, name, partitions=4):
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        fs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        fs[name].result(timeout=30)     # the client must live until the answer

    def consume(self, topic, min_count=0, timeout=60, idle=2.0):
        """Every message of topic from the start, as (key, value, partition,
        offset): until at least min_count arrived and none came for idle
        seconds, or timeout."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "t-%s" % uuid.uuid4(),
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "log_level": 0})
        # Partitions assigned directly: no consumer group to wait for.
        md = c.list_topics(topic, timeout=30)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        assert parts, "topic %s has no partitions" % topic
        c.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in parts])
        out = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        try:
            while time.monotonic() < deadline:
                batch = c.consume(num_messages=5000, timeout=0.2)
                if not batch:
                    if len(out) >= min_count and time.monotonic() - last >= idle:
                        break
                    continue
                for m in batch:
                    if m.error():
                        if m.error().code() in (KafkaError._PARTITION_EOF,
                                                KafkaError.UNKNOWN_TOPIC_OR_PART):
                            continue
                        raise RuntimeError("consumer: %s" % m.error())
                    out.append((m.key(), m.value(), m.partition(), m.offset()))
                last = time.monotonic()
        finally:
            c.close()
        return out

    def stop(self, kill=False):
        """SIGTERM (a clean stop, as an operator would), or SIGKILL."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log_f", None):
            self.log_f.close()
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self):
        self.stop()
        if not os.environ.get("PGW_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, nbytes=4000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - nbytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no broker log)"


if __name__ == "__main__":
    # Blocked, so that sigwait (not the default action) takes them and the
    # broker is stopped and its directory removed.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
    b = KafkaBroker(sys.argv[1] if len(sys.argv) > 1 else None)
    t0 = time.monotonic()
    b.start()
    print("kafka broker ready at %s in %.1fs (dir %s)" % (b.bootstrap, time.monotonic() - t0, b.base),
          flush=True)
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        b.cleanup()
