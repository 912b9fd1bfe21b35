/**
 * The meter agent's forecasts from its own metered history: the day-ahead one (same slot on
 * recent days) and the hour-ahead one (that, corrected by its recent error, fading with lead).
 */
import { expect } from "chai";
import { forecastSlot, SLOTS_PER_DAY, type SlotHistory } from "../../agents/meter-agent/dayAheadTrader.js";
import { hourAheadForecast } from "../../agents/meter-agent/intradayTrader.js";
import { expectClose } from "../support/approx.js";

const TODAY = 2_015_040; // a midnight slot
const DAY = SLOTS_PER_DAY;

/** `days` days of history before TODAY at `wh` per slot, and today's slots before `upTo` at `todayWh`. */
function history(wh: (slot: number) => number, days: number, upTo: number, todayWh: (slot: number) => number): SlotHistory {
  const h: SlotHistory = {};
  for (let s = TODAY - days * DAY; s < TODAY; s++) h[String(s)] = wh(s);
  for (let s = TODAY; s < upTo; s++) h[String(s)] = todayWh(s);
  return h;
}

describe("forecasts from the agent's metered history", function () {
  it("day-ahead: the mean of the same slot on the recent days it has", () => {
    const h = history((s) => (Math.floor(s / DAY) % 2 === 0 ? 200 : 400), 7, TODAY, () => 0);
    expect(forecastSlot(h, TODAY + 10, 2)).to.equal(300);
    expect(forecastSlot(h, TODAY + 10, 1)).to.equal(h[String(TODAY + 10 - DAY)]);
    expect(forecastSlot({}, TODAY + 10)).to.equal(undefined);
  });

  it("hour-ahead: today's recent error is carried forward, fading with the slots between the last reading and the slot", () => {
    const base = 300;
    // Today runs 400 Wh above the usual in every slot read so far (up to slot 40).
    const h = history(() => base, 7, TODAY + 41, () => base + 400);
    expect(hourAheadForecast(h, TODAY + 41)).to.equal(base + 400 * 0.85);
    expectClose(hourAheadForecast(h, TODAY + 45)!, base + 400 * 0.85 ** 5, 1e-9);
    expect(hourAheadForecast(h, TODAY + 45, 4, 1), "without fading: the whole error").to.equal(base + 400);
    // No error: the day-ahead forecast itself.
    expect(hourAheadForecast(history(() => base, 7, TODAY + 41, () => base), TODAY + 45)).to.equal(base);
    expect(hourAheadForecast({}, TODAY + 45)).to.equal(undefined);
  });
});
