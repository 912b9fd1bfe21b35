import type { SlotReport } from "../master/masterAgent.js";

export function abs(x: bigint): bigint {
  return x < 0n ? -x : x;
}

/*
 * Day-ahead awards balance within the neighbourhood, so in each slot the neighbourhood's
 * imbalance against its day-ahead schedules is its net exchange with the slack unit. A report's
 * deviations are measured against day-ahead plus activations: their sum is
 * demand - supply = metered - day-ahead + activated (activated: + up, - down). The metered
 * energy already holds what the activated flexibility delivered (a battery told to discharge
 * lowers its house's import), so:
 *   - metered - day-ahead = demand - supply - activated is what is left after balancing;
 *   - adding the activations back gives the imbalance the neighbourhood would have had
 *     without them: demand - supply, what the balancing market faced.
 * Both take the households' metered energy as it was; energy a household draws later because
 * of an activation (a drained battery, a car charging later) counts in both.
 */

/**
 * The neighbourhood's imbalance against its day-ahead schedules without the activated
 * flexibility, summed over slots: what the slack unit would have covered without the
 * balancing market.
 */
export function imbalanceBefore(reports: readonly SlotReport[]): bigint {
  return reports.reduce((a, r) => a + abs(r.demandWh - r.supplyWh), 0n);
}

/** The same after balancing: what the slack unit covered (its energy supplied plus absorbed, up to rounding). */
export function imbalanceAfter(reports: readonly SlotReport[]): bigint {
  return reports.reduce((a, r) => a + abs(r.demandWh - r.supplyWh - r.activatedWh), 0n);
}

/**
 * The imbalance with no flexibility activated at all, from a simulation's twin of each house
 * (SimulatedMarketResult.automaticNetWh): unlike imbalanceBefore it also undoes what the
 * activations moved into later slots.
 */
export function imbalanceWithoutFlexibility(automaticNetWh: ReadonlyMap<number, bigint>): bigint {
  return [...automaticNetWh.values()].reduce((a, wh) => a + abs(wh), 0n);
}
