import { dataSlice, encodeBytes32String, getAddress, id } from "ethers";
import { PARTICIPANT_KINDS, type ParticipantSpec } from "../chain/participants.js";

/**
 * `count` made-up participants for tests and benchmarks, the same for the same `seed`.
 * Addresses are hashes rather than random wallets: nobody needs their keys, and deriving 1,000
 * keys would cost seconds. Kinds cycle through every kind but the slack unit; with
 * `slackUnit: true` the last participant is the market's slack unit. Amounts vary and use
 * decimals, so that formatting and parsing are exercised.
 */
export function syntheticParticipants(count: number, seed = "p", options: { slackUnit?: boolean } = {}): ParticipantSpec[] {
  const ordinaryKinds = PARTICIPANT_KINDS.filter((k) => k !== "slackUnit");
  const out: ParticipantSpec[] = [];
  for (let i = 0; i < count; i++) {
    const kind = options.slackUnit === true && i === count - 1 ? "slackUnit" : ordinaryKinds[i % ordinaryKinds.length];
    out.push({
      account: getAddress(dataSlice(id(`${seed}/account/${i}`), 12)),
      meterKey: getAddress(dataSlice(id(`${seed}/meterKey/${i}`), 12)),
      // ≤31 characters for bytes32, whatever the seed.
      meterId: encodeBytes32String(`M-${seed.slice(0, 16)}-${i}`),
      kind: kind ?? "consumer",
      amount: 100_000_000n + BigInt(i % 97) * 1_250_000n + BigInt(i % 7),
    });
  }
  return out;
}
