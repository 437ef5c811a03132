/**
 * The admission queue on its own: a waiting request is admitted against its exact KV need as
 * soon as that is known, not only against the upper estimate it entered with.
 */
import t from 'tap';
import { Admission } from '../src/engine/admission.ts';

const settled = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

t.test('a waiting request whose exact need arrives enters as soon as that fits', async (t) => {
  const admission = new Admission(4);
  admission.setBudget(100);
  const first = await admission.enter(60, new AbortController().signal);
  t.ok(first, 'the first request enters');
  let exact: (bytes: number | null) => void = () => undefined;
  let admitted = false;
  const second = admission.enter(80, new AbortController().signal, new Promise((resolve) => (exact = resolve))).then((ticket) => {
    admitted = true;
    return ticket;
  });
  await settled();
  t.notOk(admitted, 'its estimate (80) does not fit beside the first (60) in 100');
  exact(30);
  await settled();
  t.ok(admitted, 'its exact need (30) does');
  t.equal((await second)?.bytes, 30, 'and is what it holds');
  t.equal(admission.reservedBytes, 90);
});

t.test('an unknown exact need leaves the estimate in place', async (t) => {
  const admission = new Admission(4);
  admission.setBudget(100);
  const first = await admission.enter(60, new AbortController().signal);
  let admitted = false;
  void admission.enter(80, new AbortController().signal, Promise.resolve(null)).then(() => (admitted = true));
  await settled();
  t.notOk(admitted, 'still waiting for room for 80');
  first?.release();
  await settled();
  t.ok(admitted, 'and enters once the first leaves');
  t.equal(admission.reservedBytes, 80);
});

t.test('an exact need that arrives after the request left the queue changes nothing', async (t) => {
  const admission = new Admission(4);
  admission.setBudget(100);
  await admission.enter(60, new AbortController().signal);
  const leaving = new AbortController();
  let exact: (bytes: number | null) => void = () => undefined;
  const waiting = admission.enter(80, leaving.signal, new Promise((resolve) => (exact = resolve)));
  leaving.abort();
  t.equal(await waiting, null, 'the abandoned request gets no ticket');
  exact(10);
  await settled();
  t.equal(admission.reservedBytes, 60, 'and reserves nothing');
});
