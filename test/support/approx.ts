import { expect } from "chai";

/**
 * `actual` is within `tolerance` of `expected`. Chai's closeTo is not used because
 * hardhat-ethers-chai-matchers replaces it with a bigint version once any test file has
 * connected to a network, which then rejects fractional numbers.
 */
export function expectClose(actual: number, expected: number, tolerance: number, message = ""): void {
  expect(Math.abs(actual - expected), `${message} ${actual} should be within ${tolerance} of ${expected}`.trim()).to.be.at.most(tolerance);
}
