// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IScheduleSink, IScheduleSource} from "../settlement/IScheduleSink.sol";

/**
 * @title TestScheduleSource
 * @notice FOR TESTS ONLY; never deploy it to a market. It stands in for the day-ahead market
 * (DayAheadMarket, whose own tests are written separately) in the tests of Settlement: a test
 * sets any schedule it likes for any slot and account, and pays a slot's scheduled cost into
 * settlement as the market does at clearing. Nothing is checked and anyone may call anything, so
 * that tests can also feed settlement schedules a correct market never would.
 */
contract TestScheduleSource is IScheduleSource {
    using SafeERC20 for IERC20;

    struct Entry {
        int256 netWh;
        uint256 price;
        int256 activatedWh;
    }

    /// @notice The energy token it pays with.
    IERC20 public immutable token;
    /// @notice The settlement it pays into.
    IScheduleSink public immutable sink;

    mapping(uint32 slot => mapping(address account => Entry)) private _schedules;

    /// @notice A test set `account`'s schedule in `slot`.
    event ScheduleSet(uint32 indexed slot, address indexed account, int256 netWh, uint256 price);

    /// @dev Lists of different lengths.
    error TestScheduleSourceLengthMismatch();

    constructor(IERC20 token_, IScheduleSink sink_) {
        token = token_;
        sink = sink_;
    }

    /// @notice Sets `account`'s scheduled net energy in `slot` (+ bought, - sold) and its price.
    function setSchedule(uint32 slot, address account, int256 netWh, uint256 price) external {
        Entry storage e = _schedules[slot][account];
        (e.netWh, e.price) = (netWh, price);
        emit ScheduleSet(slot, account, netWh, price);
    }

    /// @notice Sets the schedules of `accounts` in `slot`, all at `price` (as one clearing would).
    function setSchedules(uint32 slot, address[] calldata accounts, int256[] calldata netWh, uint256 price) external {
        if (accounts.length != netWh.length) revert TestScheduleSourceLengthMismatch();
        for (uint256 i = 0; i < accounts.length; ++i) {
            Entry storage e = _schedules[slot][accounts[i]];
            (e.netWh, e.price) = (netWh[i], price);
            emit ScheduleSet(slot, accounts[i], netWh[i], price);
        }
    }

    /// @notice Transfers `amount` of this contract's tokens to settlement and records it as `slot`'s
    /// schedule payment, as the day-ahead market does with buyers' costs at clearing.
    function pay(uint32 slot, uint256 amount) external {
        token.safeTransfer(address(sink), amount);
        sink.recordSchedulePayment(slot, amount);
    }

    /// @inheritdoc IScheduleSource
    function recordActivations(uint32 slot, address[] calldata accounts, int256[] calldata activatedWh) external {
        if (accounts.length != activatedWh.length) revert TestScheduleSourceLengthMismatch();
        for (uint256 i = 0; i < accounts.length; ++i) _schedules[slot][accounts[i]].activatedWh += activatedWh[i];
    }

    /// @inheritdoc IScheduleSource
    function scheduleOf(uint32 slot, address account)
        external
        view
        returns (int256 dayAheadWh, uint256 price, int256 activatedWh)
    {
        Entry storage e = _schedules[slot][account];
        return (e.netWh, e.price, e.activatedWh);
    }
}
