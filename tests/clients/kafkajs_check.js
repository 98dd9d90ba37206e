// kafkajs against a running broker: admin, idempotent gzip producer, transactions, group
// consumer, group admin, offsets, partitions, delete records, topic deletion.
//   node kafkajs_check.js 127.0.0.1:9092        (NODE_PATH must find kafkajs)
// Exits non-zero on the first failed check.
const { Kafka, logLevel, CompressionTypes } = require('kafkajs');
const brokers = process.argv[2].split(',');
const kafka = new Kafka({ clientId: 'runnel-kafkajs-check', brokers, logLevel: logLevel.NOTHING });
const t = 'kjs-' + Date.now();
const g = 'g-' + t;
function check(cond, what) {
  if (!cond) { console.log('FAIL ' + what); process.exit(1); }
  console.log('PASS ' + what);
}
(async () => {
  const admin = kafka.admin(); await admin.connect();
  check(await admin.createTopics({ topics: [{ topic: t, numPartitions: 3 }] }), 'create topic');
  check((await admin.listTopics()).includes(t), 'list topics');
  const md = await admin.fetchTopicMetadata({ topics: [t] });
  check(md.topics[0].partitions.length === 3, 'topic metadata');
  const cluster = await admin.describeCluster();
  check(cluster.brokers.length >= 1 && cluster.clusterId, 'describe cluster');
  const cfg = await admin.describeConfigs({ resources: [{ type: 2, name: t }], includeSynonyms: false });
  check(cfg.resources[0].errorCode === 0 && cfg.resources[0].configEntries.length > 0, 'describe topic configs');

  const p = kafka.producer({ idempotent: true }); await p.connect();
  for (let i = 0; i < 10; i++) {
    const r = await p.send({ topic: t, acks: -1, compression: CompressionTypes.GZIP,
      messages: [{ key: 'k' + i, value: 'v' + i, headers: { h: 'x' } }] });
    check(r[0].errorCode === 0, 'idempotent gzip send ' + i);
  }
  const tp = kafka.producer({ transactionalId: 'tx-' + t, maxInFlightRequests: 1, idempotent: true });
  await tp.connect();
  const tx = await tp.transaction(); await tx.send({ topic: t, messages: [{ key: 'tx', value: 'committed' }] }); await tx.commit();
  const tx2 = await tp.transaction(); await tx2.send({ topic: t, messages: [{ key: 'tx', value: 'aborted' }] }); await tx2.abort();
  await tp.disconnect();

  const c = kafka.consumer({ groupId: g, readUncommitted: false }); await c.connect();
  await c.subscribe({ topic: t, fromBeginning: true });
  const seen = [];
  await new Promise((resolve) => {
    c.run({ eachMessage: async ({ message }) => { seen.push(message.value.toString()); if (seen.length >= 11) resolve(); } });
    setTimeout(resolve, 20000);
  });
  await c.disconnect();
  check(seen.length === 11 && seen.includes('committed') && !seen.includes('aborted'),
    'group consumer reads 11 records, the aborted one hidden');
  const groups = (await admin.listGroups()).groups.map((x) => x.groupId);
  check(groups.includes(g), 'list groups');
  const dg = await admin.describeGroups([g]);
  check(dg.groups[0].state === 'Empty', 'describe group after the consumer left');
  const offs = await admin.fetchOffsets({ groupId: g, topics: [t] });
  const committed = offs[0].partitions.reduce((a, x) => a + Number(x.offset), 0);
  const ends = await admin.fetchTopicOffsets(t);
  check(committed > 0 && committed <= ends.reduce((a, x) => a + Number(x.high), 0), 'committed offsets within the log');
  await admin.resetOffsets({ groupId: g, topic: t, earliest: true });
  const reset = await admin.fetchOffsets({ groupId: g, topics: [t] });
  // kafkajs commits Kafka's EARLIEST sentinel (-2); the broker stores any offset, as Kafka does.
  check(reset[0].partitions.every((x) => Number(x.offset) === -2), 'reset offsets to earliest ' + JSON.stringify(reset));
  const del = await admin.deleteGroups([g]);
  check(del[0].errorCode === 0, 'delete group');
  await admin.createPartitions({ topicPartitions: [{ topic: t, count: 4 }] });
  check((await admin.fetchTopicMetadata({ topics: [t] })).topics[0].partitions.length === 4, 'create partitions');
  await admin.deleteTopicRecords({ topic: t, partitions: [{ partition: 0, offset: '-1' }] });
  const after = await admin.fetchTopicOffsets(t);
  const p0 = after.find((x) => x.partition === 0);
  check(p0.low === p0.high, 'delete records up to the high watermark');
  await admin.deleteTopics({ topics: [t] });
  check(!(await admin.listTopics()).includes(t), 'delete topic');
  await p.disconnect(); await admin.disconnect();
  console.log('kafkajs: all checks passed');
})().catch((e) => { console.log('FAIL ' + e.stack); process.exit(1); });
