import { MeterServer, type SimulatorClock } from "./meterServer.js";
import { HouseholdSimulator, householdSpec, mulberry32, type HouseholdKind, type HouseholdSpec } from "./profiles.js";

export interface NeighbourhoodMember {
  /** Stable id of the member's meter ("meter-01") or "slack" for the slack unit. */
  id: string;
  name: string;
  kind: HouseholdKind;
  spec: HouseholdSpec;
  /** False for the slack unit: it is settled from the feeder balance, not read from a meter. */
  metered: boolean;
}

// Names and kinds are fixed by position; only the households' parameters and the weather
// follow the seed, so "meter-03" is the same kind of house in every run.
const LAYOUT: ReadonlyArray<{ name: string; kind: HouseholdKind }> = [
  { name: "Lindenweg 1", kind: "consumer" },
  { name: "Lindenweg 2", kind: "consumer" },
  { name: "Lindenweg 3", kind: "pvProsumer" },
  { name: "Lindenweg 4", kind: "consumer" },
  { name: "Lindenweg 5", kind: "pvProsumer" },
  { name: "Lindenweg 6", kind: "batteryProsumer" },
  { name: "Lindenweg 7", kind: "consumer" },
  { name: "Lindenweg 8", kind: "evOwner" },
  { name: "Lindenweg 9", kind: "pvProsumer" },
];

/**
 * The default demo neighbourhood: nine metered households on one feeder (4 consumers,
 * 3 PV prosumers, 1 PV + battery, 1 EV owner) and the slack unit. Deterministic in `seed`.
 */
export function defaultNeighbourhood(seed = 1): NeighbourhoodMember[] {
  const rnd = mulberry32(seed);
  const weatherSeed = Math.floor(rnd() * 2 ** 32); // one sky over the whole street
  const members: NeighbourhoodMember[] = LAYOUT.map(({ name, kind }, i) => ({
    id: `meter-${String(i + 1).padStart(2, "0")}`,
    name,
    kind,
    spec: householdSpec(kind, Math.floor(rnd() * 2 ** 32), weatherSeed),
    metered: true,
  }));
  members.push({ id: "slack", name: "Feeder slack unit", kind: "slackUnit", spec: householdSpec("slackUnit", 0, weatherSeed), metered: false });
  return members;
}

export interface RunningMeter {
  member: NeighbourhoodMember;
  server: MeterServer;
}

/**
 * Starts one Modbus TCP meter server per metered member, all on free loopback ports.
 * If one fails to start, those already started are closed again.
 */
export async function startMeterServers(members: readonly NeighbourhoodMember[], clock: SimulatorClock): Promise<RunningMeter[]> {
  const running: RunningMeter[] = [];
  try {
    for (const member of members.filter((m) => m.metered)) {
      const household = new HouseholdSimulator(member.spec, new Date(clock.now()));
      running.push({ member, server: await MeterServer.start({ household, clock }) });
    }
  } catch (error) {
    await Promise.all(running.map((r) => r.server.close()));
    throw error;
  }
  return running;
}
