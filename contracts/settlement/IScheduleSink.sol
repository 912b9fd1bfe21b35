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
