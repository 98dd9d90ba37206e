#!/usr/bin/env python3
"""aiokafka against a running broker: admin, idempotent lz4 producer, batch send, transaction,
read_committed group consumer with commit, offsets by time, group admin, topic deletion.
    python aiokafka_check.py 127.0.0.1:9092
Exits non-zero on the first failed check."""
import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

B = sys.argv[1]


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL {what}")
    print(f"PASS {what}")


async def main():
    t = f"aio-{int(time.time() * 1000)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=B)
    await admin.start()
    r = await admin.create_topics([NewTopic(t, 3, 1)])
    check(all(e[1] == 0 for e in r.topic_errors), "create topic with 3 partitions")
    d = await admin.describe_topics([t])
    check(len(d[0]["partitions"]) == 3, "describe topic")

    p = AIOKafkaProducer(bootstrap_servers=B, acks="all", enable_idempotence=True, compression_type="lz4")
    await p.start()
    offsets = {}
    for i in range(20):
        md = await p.send_and_wait(t, f"v{i}".encode(), key=f"k{i}".encode(), headers=[("h", b"1")])
        offsets.setdefault(md.partition, []).append(md.offset)
    check(all(o == list(range(len(o))) for o in offsets.values()), "idempotent lz4 sends get dense offsets")
    batch = p.create_batch()
    for i in range(5):
        batch.append(key=None, value=b"b%d" % i, timestamp=None)
    md = await (await p.send_batch(batch, t, partition=0))
    check(md.offset == len(offsets.get(0, [])), "send_batch lands after the earlier records")
    await p.stop()

    tp = AIOKafkaProducer(bootstrap_servers=B, transactional_id="aio-tx-" + t)
    await tp.start()
    async with tp.transaction():
        await tp.send_and_wait(t, b"committed", partition=1)
    await tp.begin_transaction()
    await tp.send_and_wait(t, b"aborted", partition=1)
    await tp.abort_transaction()
    await tp.stop()

    c = AIOKafkaConsumer(t, bootstrap_servers=B, group_id="g-" + t, auto_offset_reset="earliest",
                         isolation_level="read_committed", enable_auto_commit=False)
    await c.start()
    values = []
    deadline = time.time() + 20
    while len(values) < 26 and time.time() < deadline:
        for msgs in (await c.getmany(timeout_ms=500)).values():
            values += [m.value for m in msgs]
    check(len(values) == 26 and b"committed" in values and b"aborted" not in values,
          "read_committed group consumer reads 26 records, the aborted one hidden")
    await c.commit()
    committed = await c.committed(TopicPartition(t, 0))
    check(committed == len(offsets.get(0, [])) + 5, "committed offset of partition 0")
    ends = await c.end_offsets([TopicPartition(t, i) for i in range(3)])
    check(sum(ends.values()) >= 26, "end offsets")
    ts = await c.offsets_for_times({TopicPartition(t, 0): 0})
    check(ts[TopicPartition(t, 0)].offset == 0, "offsets_for_times(0) is offset 0")
    await c.stop()

    groups = await admin.list_consumer_groups()
    check(("g-" + t, "consumer") in groups, "list consumer groups")
    dg = await admin.describe_consumer_groups(["g-" + t])
    check(dg[0].groups[0][0] == 0, "describe consumer group")
    go = await admin.list_consumer_group_offsets("g-" + t)
    check(go[TopicPartition(t, 0)].offset == committed, "group offsets from the admin client")
    cfg = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)])
    check(cfg[0].resources[0][0] == 0, "describe topic configs")
    r = await admin.delete_topics([t])
    check(all(e[1] == 0 for e in r.topic_error_codes), "delete topic")
    await admin.close()
    print("aiokafka: all checks passed")


asyncio.run(main())
