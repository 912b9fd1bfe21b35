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
 * @notice What settlement needs of the markets: each participant's scheduled net energy in a slot.
 */
interface IScheduleSource {
    /// @notice Scheduled net energy of `account` in `slot` (+ bought, - sold) and the price it was traded at.
    function scheduleOf(uint32 slot, address account) external view returns (int256 netWh, uint256 price);
}

/**
 * @title IBalancingSource
 * @notice What settlement needs of the balancing market: activations, which join schedules.
 */
interface IBalancingSource {
    /// @notice `account`'s activation in `slot` (+ downward: it buys, - upward: it sells) and its price.
    function activationOf(uint32 slot, address account) external view returns (int256 activatedWh, uint256 price);

    /// @notice A slot's activated flexibility up and down, and their prices.
    function slotResult(uint32 slot) external view returns (uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice);
}
