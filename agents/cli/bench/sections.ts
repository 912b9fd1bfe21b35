import { dayAheadSection } from "./dayahead.js";
import { demoSection } from "./demo.js";
import { foundationSection } from "./foundation.js";
import { intradaySection } from "./intraday.js";
import { meteringSection } from "./metering.js";
import type { BenchSection } from "./types.js";

/**
 * Every benchmark section, run in this order by `npm run bench`. Add yours here (metering,
 * day-ahead clearing, balancing, settlement ...): one BenchSection in its own file.
 */
export const SECTIONS: readonly BenchSection[] = [foundationSection, meteringSection, dayAheadSection, intradaySection, demoSection];
