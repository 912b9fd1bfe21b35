/**
 * The meter agent as a real process (agents/meter-agent/main.ts), killed with SIGKILL and
 * restarted, on a Settlement deployed by Ignition with short real-time slots (a parameters
 * file sets 12-second slots and a 10-second reading window) and a Modbus TCP meter running on
 * the system clock. Every slot's reading must reach the chain exactly once, with the
 * registers the meter showed at the slot's end.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { expect } from "chai";
import type { MeterAgentState } from "../../agents/meter-agent/meterAgent.js";
import { JsonStore } from "../../agents/meter-agent/store.js";
import { MeterServer, systemClock } from "../../agents/simulator/meterServer.js";
import { HouseholdSimulator, type HouseholdSpec } from "../../agents/simulator/profiles.js";
import { AgentProcess, type LogLine } from "../support/agentProcess.js";
import { alignChainClockWithWall, billedEvents, expectEscrowIdentity, recordedReadings, startTestMarket, type TestMarket, type TestParticipant } from "../support/localMarket.js";

const SLOT_SECONDS = 12;
// A long window for so short a slot: a restart on a busy machine may take seconds.
const READING_WINDOW = 10;
const SLOT_MS = SLOT_SECONDS * 1000;

/** A big consumer (about 11 kW), so that every 12-second slot moves the register by tens of Wh. */
const HEAVY_CONSUMER: HouseholdSpec = { kind: "consumer", utcOffsetMinutes: 60, load: { annualKwh: 100_000, seed: 5, noise: 0.15 } };

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("meter agent process: SIGKILL and restart on short real-time slots", function () {
  this.timeout(120_000);

  let m: TestMarket;
  let house: TestParticipant;
  let dir: string;
  let server: MeterServer;
  let twin: HouseholdSimulator;
  const processes: AgentProcess[] = [];

  before(async function () {
    this.timeout(300_000);
    dir = mkdtempSync(path.join(tmpdir(), "agent-process-test-"));
    m = await startTestMarket({ parameters: { SettlementModule: { slotSeconds: SLOT_SECONDS, readingWindow: READING_WINDOW } } });
    const participants = await m.addParticipants([
      { name: "heavy", kind: "consumer", accountIndex: 1 },
      { name: "slack", kind: "slackUnit", accountIndex: 19, mint: "1000", deposit: "500" },
    ]);
    house = participants[0]!;
    const start = new Date();
    server = await MeterServer.start({ household: new HouseholdSimulator(HEAVY_CONSUMER, start), clock: systemClock });
    twin = new HouseholdSimulator(HEAVY_CONSUMER, start);
  });

  after(async () => {
    for (const p of processes) p.kill("SIGKILL");
    await Promise.all(processes.map((p) => p.exited));
    await server?.close();
    await m?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  /** Waits until `phaseMs` into the current slot (real time), or into the next one if that moment has passed. */
  async function untilPhase(phaseMs: number): Promise<void> {
    const now = Date.now();
    const slotStart = Math.floor(now / SLOT_MS) * SLOT_MS;
    const target = slotStart + phaseMs >= now ? slotStart + phaseMs : slotStart + SLOT_MS + phaseMs;
    await delay(target - now);
  }

  it("puts every slot's reading on chain exactly once across a kill mid-slot and a kill right after signing", async () => {
    expect(m.slotSeconds).to.equal(SLOT_SECONDS);
    expect(m.readingWindow).to.equal(READING_WINDOW);
    // Deployment and funding pushed the node's clock seconds ahead of the agent's system clock.
    await alignChainClockWithWall(m.provider);
    const lead = (await m.chainTimeMs()) - Date.now();
    expect(lead, "node clock within 2 s of the wall clock").to.be.within(-1_000, 2_000);

    const stateFile = path.join(dir, "agent-state.json");
    const configFile = path.join(dir, "meter-agent.json");
    writeFileSync(
      configFile,
      JSON.stringify({
        account: house.account,
        rpcUrl: m.node.url,
        settlement: m.settlementAddress,
        meter: { transport: "tcp", host: server.host, port: server.port, unitId: 1, model: "sdm630" },
        stateFile,
        pollIntervalMs: 250,
        captureLagMs: 3_000,
        // Metering only: the markets of this deployment keep 15-minute slots.
        dayAhead: false,
        intraday: false,
      }),
    );
    const run = (): AgentProcess => {
      const p = new AgentProcess(configFile, house.meterKey.privateKey);
      processes.push(p);
      return p;
    };
    const isFrom = (slot: number) => (l: LogLine) => l.slot === slot;

    // The end of the slot the agent starts in gives the baseline reading.
    const a1 = run();
    const ready = await a1.waitFor((l) => l.msg === "meter agent ready", 10_000, "start-up");
    expect(ready.pending).to.equal(0);
    const first = (ready.lastClosedSlot as number) + 1;
    await a1.waitFor((l) => l.msg === "reading submitted by agent" && isFrom(first)(l), SLOT_MS + 5_000, `reading of slot ${first}`);

    // Killed in the middle of the next slot, restarted at once.
    await untilPhase(SLOT_MS / 2);
    a1.kill("SIGKILL");
    expect((await a1.exited).signal).to.equal("SIGKILL");
    const a2 = run();
    await a2.waitFor((l) => l.msg === "meter agent ready", 10_000, "restart");
    expect(a2.lines.find((l) => l.msg === "meter agent ready")).to.include({ lastClosedSlot: first, pending: 0 });
    await a2.waitFor((l) => l.msg === "reading submitted by agent" && isFrom(first + 1)(l), SLOT_MS + 5_000, `reading of slot ${first + 1}`);

    // Killed the moment the next reading is signed and saved, before or while it is submitted.
    const signed = await a2.waitFor((l) => l.msg === "reading signed" && isFrom(first + 2)(l), SLOT_MS + 5_000, `signature of slot ${first + 2}`);
    a2.kill("SIGKILL");
    await a2.exited;
    const a3 = run();
    const ready3 = await a3.waitFor((l) => l.msg === "meter agent ready", 10_000, "second restart");
    const restartedAfterMs = Date.parse(ready3.ts) - (first + 3) * SLOT_MS;
    expect(restartedAfterMs, "restarted inside the reading window (a slow machine shows here)").to.be.below(READING_WINDOW * 1000);
    await a3.waitFor((l) => (l.msg === "reading on chain" || l.msg === "reading submitted by agent") && isFrom(first + 2)(l), READING_WINDOW * 1000, `slot ${first + 2} on chain`);
    a3.kill("SIGTERM");
    expect((await a3.exited).code, a3.dump()).to.equal(0);

    // Exactly one reading per slot, registers rising, none lost.
    const readings = await recordedReadings(m.settlement, house.account);
    expect(readings.map((r) => r.slot)).to.deep.equal([first, first + 1, first + 2]);
    for (let i = 1; i < readings.length; i++) {
      expect(readings[i]!.importWh > readings[i - 1]!.importWh, "registers rise").to.equal(true);
      expect(readings[i]!.importDeltaWh).to.equal(readings[i]!.importWh - readings[i - 1]!.importWh);
    }
    const nonce = await m.provider.getTransactionCount(house.meterKey.address);
    expect(nonce, "one transaction per reading: nothing sent twice").to.equal(readings.length);
    const bills = await billedEvents(m.settlement, house.account);
    expect(bills.map((b) => [b.slot, b.netWh])).to.deep.equal([[first + 1, BigInt(readings[1]!.importDeltaWh)]]);

    // Each reading is what the meter showed between its slot's end and the agent's signing, to
    // float32 precision (1 Wh of rounding at these register values).
    const signedAt = new Map<number, number>();
    for (const p of processes) for (const l of p.lines) if (l.msg === "reading signed" && l.slot !== undefined) signedAt.set(l.slot, Date.parse(l.ts));
    expect(signedAt.get(first + 2)).to.equal(Date.parse(signed.ts));
    for (const r of readings) {
      twin.advanceTo(new Date((r.slot + 1) * SLOT_MS));
      const atEnd = twin.registers.importWh;
      twin.advanceTo(new Date(signedAt.get(r.slot)!));
      const atSigning = twin.registers.importWh;
      expect(Number(r.importWh), `slot ${r.slot}: meter at its end ${atEnd.toFixed(2)} Wh, at signing ${atSigning.toFixed(2)} Wh`)
        .to.be.at.least(Math.floor(atEnd) - 1)
        .and.at.most(Math.ceil(atSigning) + 1);
      expect(r.exportWh).to.equal(0n);
      expect(signedAt.get(r.slot)! - (r.slot + 1) * SLOT_MS, "signed promptly after the slot's end").to.be.below(3_000);
    }

    const state = await new JsonStore<MeterAgentState>(stateFile).load();
    expect(state).to.include({ lastClosedSlot: first + 2, lastImportWh: readings[2]!.importWh.toString() });
    expect(state!.pending).to.deep.equal({});
    await expectEscrowIdentity(m.token, m.settlement);
  });
});
