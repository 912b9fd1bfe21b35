// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @title IScheduleSink
 * @notice What a market needs of settlement: somewhere to put the cost of scheduled energy at
 * clearing, so that sellers are paid from it when the slot is settled.
 */
interface IScheduleSink {
    /// @notice The calling market has just transferred `amount` tokens for `slot`'s schedule. Only a market (MARKET_ROLE).
    function recordSchedulePayment(uint32 slot, uint256 amount) external;
}

/**
 * @title IScheduleSource
 * @notice Where each participant's schedule in a slot is kept: its day-ahead award, and the
 * balancing market's activations, which join it. Settlement reads both in one call per reading.
 */
interface IScheduleSource {
    /**
     * @notice `account`'s schedule in `slot`: its day-ahead award (+ bought, - sold) at the
     * day-ahead `price`, and its activated balancing energy (+ downward: it buys, - upward: it
     * sells), priced by the balancing market's slot result.
     */
    function scheduleOf(uint32 slot, address account)
        external
        view
        returns (int256 dayAheadWh, uint256 price, int256 activatedWh);

    /// @notice Adds activations to schedules: `activatedWh[i]` to `accounts[i]`'s in `slot`. Only the balancing market.
    function recordActivations(uint32 slot, address[] calldata accounts, int256[] calldata activatedWh) external;
}

/**
 * @title IBalancingSource
 * @notice What settlement needs of the balancing market: each slot's result, for imbalance prices
 * (the activations themselves join the schedules in IScheduleSource).
 */
interface IBalancingSource {
    /// @notice A slot's activated flexibility up and down, and their prices.
    function slotResult(uint32 slot) external view returns (uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice);
}
