import { imbalanceAfter, imbalanceBefore } from "../../simulator/dayFigures.js";
import { withSimulatedMarket } from "../../simulator/marketRun.js";
import type { BenchSection } from "./types.js";

/**
 * The demo's day (default neighbourhood, seed 1, next midsummer): how much the balancing
 * market reduces the imbalance left to the slack unit, and the slack unit's energy.
 */
export const demoSection: BenchSection = {
  name: "demo",
  async run(ctx) {
    const started = Date.now();
    return await withSimulatedMarket({ onProgress: (m) => ctx.log(m) }, async (run) => {
      const { reports } = await run();
      const slackWh = reports.reduce((a, r) => a + r.slackSuppliedWh + r.slackAbsorbedWh, 0n);
      return {
        "demo.imbalanceBeforeWh": Number(imbalanceBefore(reports)),
        "demo.imbalanceAfterWh": Number(imbalanceAfter(reports)),
        "demo.slackWh": Number(slackWh),
        "demo.wallTime.s": Math.round((Date.now() - started) / 1000),
      };
    });
  },
};
