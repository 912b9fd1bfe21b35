/**
 * The participant vocabulary shared by files, tools and agents, mirroring IParticipantRegistry.
 * The order of PARTICIPANT_KINDS is the order of the Solidity enum `Kind`: the index is what
 * goes on chain, so never reorder it without changing the contract.
 */
export const PARTICIPANT_KINDS = ["consumer", "prosumer", "producer", "storage", "flexibleLoad", "slackUnit"] as const;
export type ParticipantKind = (typeof PARTICIPANT_KINDS)[number];

/** Mirrors the Solidity enum `Status`; `none` means never registered. */
export const PARTICIPANT_STATUSES = ["none", "active", "suspended"] as const;
export type ParticipantStatus = (typeof PARTICIPANT_STATUSES)[number];

/** The on-chain enum value of `kind`. */
export function kindValue(kind: ParticipantKind): number {
  return PARTICIPANT_KINDS.indexOf(kind);
}

/** The kind name of an on-chain enum value, or `kind#<n>` for a value this code does not know. */
export function kindName(value: bigint | number): string {
  return PARTICIPANT_KINDS[Number(value)] ?? `kind#${value}`;
}

/** The status name of an on-chain enum value, or `status#<n>` for a value this code does not know. */
export function statusName(value: bigint | number): string {
  return PARTICIPANT_STATUSES[Number(value)] ?? `status#${value}`;
}

/** One participant to register and fund, as the chain sees it (validated, normalised). */
export interface ParticipantSpec {
  /** Checksummed wallet address. */
  account: string;
  /** The meter id as bytes32 (ethers.encodeBytes32String of the printed id). */
  meterId: string;
  /** Checksummed address of the meter agent's signing key. */
  meterKey: string;
  kind: ParticipantKind;
  /** Tokens to mint, in base units (the token has 6 decimals). */
  amount: bigint;
}
