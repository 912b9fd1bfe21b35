import type { SlotReport } from "../master/masterAgent.js";

export function abs(x: bigint): bigint {
  return x < 0n ? -x : x;
}

/**
 * The neighbourhood's imbalance against its day-ahead schedules, summed over slots: what the
 * slack unit would have had to cover without the balancing market. Deviations in a report are
 * measured against day-ahead plus activations, so the activations are added back.
 */
export function imbalanceBefore(reports: readonly SlotReport[]): bigint {
  return reports.reduce((a, r) => a + abs(r.demandWh - r.supplyWh - r.activatedWh), 0n);
}

/** The same, after the balancing market's activations. */
export function imbalanceAfter(reports: readonly SlotReport[]): bigint {
  return reports.reduce((a, r) => a + abs(r.demandWh - r.supplyWh), 0n);
}
