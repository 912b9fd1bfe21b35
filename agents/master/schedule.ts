import schedule from "node-schedule";
import type { Logger } from "../log.js";
import { shortError } from "../meter-agent/meterAgent.js";
import type { MasterAgent } from "./masterAgent.js";

/**
 * Runs the master on the quarter hour, in UTC, for 15-minute slots. The slot that just ended
 * is computed from the job's fire date, not from the wall clock when the handler happens to
 * run, so a late handler still works on the right slot; a run that never happened (process
 * down, machine asleep) is caught up at the next one.
 */
export function scheduleMaster(master: MasterAgent, slotSeconds: number, logger: Logger): schedule.Job {
  if (slotSeconds !== 900) {
    throw new RangeError(`the quarter-hour schedule needs 900-second slots, the contract has ${slotSeconds}`);
  }
  let running = Promise.resolve();
  return schedule.scheduleJob({ rule: "0 0,15,30,45 * * * *", tz: "Etc/UTC" }, (fireDate: Date) => {
    const ended = Math.floor(fireDate.getTime() / 1000 / slotSeconds) - 1;
    running = running.then(async () => {
      try {
        await master.catchUp(); // slots missed since the last run, if any
        await master.handleSlotEnd(ended);
      } catch (e) {
        logger({ level: "error", msg: "slot cycle failed; retried at the next quarter hour", slot: ended, error: shortError(e) });
      }
    });
  });
}
