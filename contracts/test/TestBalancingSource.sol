// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IBalancingSource, IScheduleSink, IScheduleSource} from "../settlement/IScheduleSink.sol";

/**
 * @title TestBalancingSource
 * @notice FOR TESTS ONLY; never deploy it to a market. It stands in for the intra-day balancing
 * market (IntradayMarket, tested separately) in fuzz tests of Settlement: a test sets any
 * activations it likes for any slot, in either direction or both at once, and pays the
 * downward activations' cost into settlement as the market does at clearing. Nothing is checked
 * and anyone may call anything, so that tests can also feed settlement results a correct market
 * never would (both directions in one slot, prices outside the market's bounds). Activations
 * join the schedules of `schedule` (a TestScheduleSource), as a real one's join the day-ahead market's.
 */
contract TestBalancingSource is IBalancingSource {
    using SafeERC20 for IERC20;

    struct Result {
        uint256 upWh;
        uint256 downWh;
        uint256 upPrice;
        uint256 downPrice;
    }

    /// @notice The energy token it pays with.
    IERC20 public immutable token;
    /// @notice The settlement it pays into.
    IScheduleSink public immutable sink;
    /// @notice Where its activations join the schedules.
    IScheduleSource public immutable schedule;

    mapping(uint32 slot => Result) private _results;

    /// @notice A test set the activations of `slot`: `upWh` up at `upPrice`, `downWh` down at `downPrice`.
    event ActivationsSet(uint32 indexed slot, uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice);

    /// @dev Lists of different lengths.
    error TestBalancingSourceLengthMismatch();

    constructor(IERC20 token_, IScheduleSink sink_, IScheduleSource schedule_) {
        token = token_;
        sink = sink_;
        schedule = schedule_;
    }

    /**
     * @notice Sets the activations of `accounts` in `slot` (`wh[i]`: + downward, the account buys;
     * - upward, it sells), upward ones at `upPrice` and downward ones at `downPrice`, and the slot's
     * result as their sums, as a clearing would (but both directions are allowed).
     */
    function setActivations(uint32 slot, address[] calldata accounts, int256[] calldata wh, uint256 upPrice, uint256 downPrice)
        external
    {
        if (accounts.length != wh.length) revert TestBalancingSourceLengthMismatch();
        Result memory r = Result(0, 0, upPrice, downPrice);
        for (uint256 i = 0; i < accounts.length; ++i) {
            int256 q = wh[i];
            if (q < 0) r.upWh += uint256(-q);
            else r.downWh += uint256(q);
        }
        if (r.upWh == 0) r.upPrice = 0;
        if (r.downWh == 0) r.downPrice = 0;
        _results[slot] = r;
        schedule.recordActivations(slot, accounts, wh);
        emit ActivationsSet(slot, r.upWh, r.downWh, r.upPrice, r.downPrice);
    }

    /// @notice Transfers `amount` of this contract's tokens to settlement and records it as `slot`'s
    /// schedule payment, as the balancing market does with downward activations' cost at clearing.
    function pay(uint32 slot, uint256 amount) external {
        token.safeTransfer(address(sink), amount);
        sink.recordSchedulePayment(slot, amount);
    }

    /// @inheritdoc IBalancingSource
    function slotResult(uint32 slot) external view returns (uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice) {
        Result storage r = _results[slot];
        return (r.upWh, r.downWh, r.upPrice, r.downPrice);
    }
}
