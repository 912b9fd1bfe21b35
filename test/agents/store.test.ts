import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "chai";
import { MarketError } from "../../agents/errors.js";
import { JsonStore, StoreAccessError, StoreCorruptError, StoreVersionError } from "../../agents/meter-agent/store.js";
import { mulberry32 } from "../../agents/simulator/profiles.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const STORE_MODULE = join(REPO, "agents/meter-agent/store.ts");

/** A state whose every part follows from its counter, so a mixed or stale file shows. */
interface TestState {
  counter: number;
  lastImportWh: string;
  pending: Record<string, { signed: string }>;
  payload: string;
}

function stateFor(counter: number): TestState {
  const pending: TestState["pending"] = {};
  for (let slot = counter; slot < counter + 3; slot += 1) pending[String(slot)] = { signed: `0x${slot.toString(16).padStart(130, "0")}` };
  // ~200 kB, so that a write takes long enough to be interrupted part-way.
  return { counter, lastImportWh: String(BigInt(counter) * 1_000_003n), pending, payload: `${counter}:`.repeat(20_000) };
}

function validateTestState(value: unknown): TestState {
  const s = value as TestState;
  if (typeof s !== "object" || s === null || !Number.isSafeInteger(s.counter)) throw new Error("counter missing");
  if (JSON.stringify(s) !== JSON.stringify(stateFor(s.counter))) throw new Error(`state ${s.counter} is inconsistent`);
  return s;
}

async function caught(run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run();
  } catch (error) {
    return error;
  }
  throw new Error("expected an error");
}

describe("meter-agent: JSON state store", function () {
  this.timeout(10_000);
  let dir = "";

  beforeEach(function () {
    dir = mkdtempSync(join(tmpdir(), "store-"));
  });

  afterEach(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  it("round-trips a state and reports a missing file as no state", async function () {
    const store = new JsonStore<TestState>(join(dir, "agent.json"), { version: 3, validate: validateTestState });
    expect(await store.load()).to.equal(undefined);
    await store.save(stateFor(7));
    expect(await store.load()).to.deep.equal(stateFor(7));
    const onDisk = JSON.parse(readFileSync(join(dir, "agent.json"), "utf8")) as { version: number; sha256: string };
    expect(onDisk.version).to.equal(3);
    expect(onDisk.sha256).to.match(/^[0-9a-f]{64}$/);
    expect(readdirSync(dir)).to.deep.equal(["agent.json"]); // no temporary files left behind
  });

  it("saves in call order, each save a snapshot taken at the call", async function () {
    const store = new JsonStore<TestState>(join(dir, "agent.json"), { validate: validateTestState });
    const state = stateFor(1);
    const first = store.save(state);
    state.counter = 999; // the caller goes on changing its object
    const saves = [first, ...[2, 3, 4, 5].map((n) => store.save(stateFor(n)))];
    await Promise.all(saves);
    expect((await store.load())?.counter).to.equal(5);
  });

  it("reports every truncated file as corrupt, naming the file, and never resets it", async function () {
    const file = join(dir, "agent.json");
    const store = new JsonStore<TestState>(file, { validate: validateTestState });
    await store.save(stateFor(3));
    const full = readFileSync(file, "utf8");
    const rnd = mulberry32(11);
    const lengths = [0, 1, 2, full.length - 2, ...Array.from({ length: 60 }, () => Math.floor(rnd() * (full.length - 1)))];
    for (const length of lengths) {
      writeFileSync(file, full.slice(0, length));
      const error = await caught(() => store.load());
      expect(error, `truncated to ${length} bytes`).to.be.instanceOf(StoreCorruptError);
      expect((error as StoreCorruptError).code).to.equal("STORE_CORRUPT");
      expect((error as StoreCorruptError).file).to.equal(file);
      expect((error as Error).message).to.contain(file);
      expect(readFileSync(file, "utf8"), "the damaged file is left for a person to look at").to.equal(full.slice(0, length));
    }
  });

  it("detects an altered state, a foreign version, a state failing validation and an unusable path", async function () {
    const file = join(dir, "agent.json");
    const store = new JsonStore<TestState>(file, { version: 2, validate: validateTestState });
    await store.save(stateFor(4));
    const text = readFileSync(file, "utf8");

    // Still valid JSON, one digit changed: only the checksum can tell.
    writeFileSync(file, text.replace('"lastImportWh": "4000012"', '"lastImportWh": "4000013"'));
    expect(readFileSync(file, "utf8")).to.not.equal(text);
    const altered = await caught(() => store.load());
    expect(altered).to.be.instanceOf(StoreCorruptError);
    expect((altered as Error).message).to.match(/checksum/);

    writeFileSync(file, text);
    const newer = await caught(() => new JsonStore<TestState>(file, { version: 1 }).load());
    expect(newer).to.be.instanceOf(StoreVersionError);
    expect(newer).to.include({ found: 2, expected: 1, file });

    const strict = new JsonStore<TestState>(file, {
      version: 2,
      validate: () => {
        throw new Error("pending.signed must be hex");
      },
    });
    const invalid = await caught(() => strict.load());
    expect(invalid).to.be.instanceOf(StoreCorruptError);
    expect((invalid as Error).message).to.contain("pending.signed must be hex");

    writeFileSync(join(dir, "not-a-folder"), "");
    const blocked = new JsonStore<TestState>(join(dir, "not-a-folder", "agent.json"));
    expect(await caught(() => blocked.load())).to.be.instanceOf(StoreAccessError);
    const unwritable = await caught(() => blocked.save(stateFor(1)));
    expect(unwritable).to.be.instanceOf(StoreAccessError);
    expect(unwritable).to.be.instanceOf(MarketError);
  });

  it("refuses to write a state it could not load back, leaving the old one", async function () {
    const file = join(dir, "agent.json");
    const store = new JsonStore<TestState>(file, { validate: validateTestState });
    await store.save(stateFor(5));
    expect(await caught(() => store.save({ ...stateFor(6), payload: "torn" }))).to.be.instanceOf(Error);
    const withBigint = new JsonStore<{ importWh: bigint }>(join(dir, "b.json"));
    expect(await caught(() => withBigint.save({ importWh: 5n }))).to.be.instanceOf(TypeError);
    expect((await store.load())?.counter).to.equal(5);
  });

  it("survives a writer killed at random moments: the file always loads as the old or the new state", async function () {
    const file = join(dir, "agent.json");
    const writer = `
      import { JsonStore } from ${JSON.stringify(STORE_MODULE)};
      const store = new JsonStore(process.argv[1]);
      let n = (await store.load())?.counter ?? 0;
      process.stdout.write("ready\\n");
      const stateFor = ${stateFor.toString()};
      for (;;) {
        n += 1;
        await store.save(stateFor(n));
        process.stdout.write("saved " + n + "\\n");
      }
    `;
    const store = new JsonStore<TestState>(file, { validate: validateTestState });
    const rnd = mulberry32(99);
    let confirmed = 0; // the last save the writer saw complete
    let interruptedMidWrite = 0;
    for (let round = 0; round < 20; round += 1) {
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", writer, file], {
        cwd: REPO,
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      let err = "";
      child.stdout.on("data", (chunk: Buffer) => {
        out += chunk.toString();
        if (out.startsWith("ready\n") && !child.killed) {
          // SIGKILL: no handler runs, like a power cut (though the page cache survives it).
          setTimeout(() => child.kill("SIGKILL"), Math.floor(rnd() * 60));
          out = out.replace("ready\n", "running\n");
        }
      });
      child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()));
      const exit = await new Promise<NodeJS.Signals | number | null>((resolve) => child.on("close", (code, signal) => resolve(signal ?? code)));
      expect(exit, `writer must be killed, not fail: ${err}`).to.equal("SIGKILL");

      const saved = [...out.matchAll(/saved (\d+)/g)].map((m) => Number(m[1]));
      if (saved.length > 0) confirmed = Math.max(...saved);
      if (readdirSync(dir).some((name) => name.endsWith(".tmp"))) interruptedMidWrite += 1;

      const loaded = await store.load(); // throws if the file is torn or mixed
      const counter = loaded?.counter ?? 0;
      // Every completed save is durable; at most the one in flight may also have landed.
      expect(counter, `round ${round}`).to.be.oneOf([confirmed, confirmed + 1]);
      confirmed = counter;
      expect(readdirSync(dir).filter((name) => name.endsWith(".tmp")), "leftovers are cleared on load").to.deep.equal([]);
    }
    expect(confirmed, "the writer made progress").to.be.greaterThan(20);
    // Informative: how many kills landed between creating a temporary file and renaming it.
    this.test!.title += ` (${interruptedMidWrite} of 20 kills left a temporary file)`;
  });
});
