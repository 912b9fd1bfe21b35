import { Signature, TypedDataEncoder, type BaseWallet, type TypedDataDomain } from "ethers";

/**
 * Meter readings as the Settlement contract takes them, signed independently of the agents' code
 * (the tests check the contract against the EIP-712 spec, not against another implementation).
 */

/** A reading: cumulative registers of `account`'s meter at the end of `slot`. */
export interface Reading {
  account: string;
  slot: bigint;
  importWh: bigint;
  exportWh: bigint;
}

/** A reading with its EIP-2098 compact signature, as `submitReading(s)` takes it. */
export interface SignedReading {
  reading: Reading;
  r: string;
  vs: string;
}

export const READING_DOMAIN_NAME = "ProsumerMarket Settlement";
export const READING_DOMAIN_VERSION = "1";

export const READING_TYPES = {
  Reading: [
    { name: "account", type: "address" },
    { name: "slot", type: "uint32" },
    { name: "importWh", type: "uint64" },
    { name: "exportWh", type: "uint64" },
  ],
};

/** The EIP-712 domain of the settlement contract at `verifyingContract` on `chainId`. */
export function readingDomain(chainId: bigint, verifyingContract: string): TypedDataDomain {
  return { name: READING_DOMAIN_NAME, version: READING_DOMAIN_VERSION, chainId, verifyingContract };
}

/** The digest a meter key signs, computed off chain. */
export function readingDigest(domain: TypedDataDomain, reading: Reading): string {
  return TypedDataEncoder.hash(domain, READING_TYPES, reading);
}

/** Signs `reading` with the meter key `key` and returns it in compact (r, vs) form. */
export async function signReading(key: BaseWallet, domain: TypedDataDomain, reading: Reading): Promise<SignedReading> {
  const signature = Signature.from(await key.signTypedData(domain, READING_TYPES, reading));
  return { reading: { ...reading }, r: signature.r, vs: signature.yParityAndS };
}

/** A copy of `signed` whose reading differs in some field but keeps the original signature. */
export function tampered(signed: SignedReading, change: Partial<Reading>): SignedReading {
  return { reading: { ...signed.reading, ...change }, r: signed.r, vs: signed.vs };
}
