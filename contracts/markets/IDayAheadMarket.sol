// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IScheduleSource} from "../settlement/IScheduleSink.sol";

/**
 * @title IDayAheadMarket
 * @notice Day-ahead double auction per slot, with escrowed buy orders. See DayAheadMarket.
 */
interface IDayAheadMarket is IScheduleSource {
    /// @notice One participant's order in one slot: a buy (limit = highest price) or a sell (limit = lowest price).
    struct Order {
        bool isSell;
        uint40 qtyWh;
        uint48 price; // token base units per kWh
        uint32 index; // position in the slot's book, fixed at first placement: the time priority
        uint40 awardedWh;
        bool placed;
        int32 activatedWh; // the balancing market's activations in the slot (+ downward, - upward)
    }

    /// @notice What a participant sends to place or change an order.
    struct OrderInput {
        uint32 slot;
        bool isSell;
        uint40 qtyWh;
        uint48 price;
    }

    /// @notice A clearing computed off chain: every order of the slot, sorted, and the result.
    /// @dev `buyers` by price descending, `sellers` by price ascending, ties by book index
    /// ascending (earlier first); awards in the same order as the accounts.
    struct Clearing {
        uint32 slot;
        address[] buyers;
        address[] sellers;
        uint40[] buyAwardsWh;
        uint40[] sellAwardsWh;
        uint48 price;
        uint64 volumeWh;
    }

    /// @notice A slot's book: its size and, once cleared, the result.
    struct BookView {
        uint32 size;
        bool cleared;
        uint48 price;
        uint64 volumeWh;
        uint256 escrow;
    }

    /// @dev The quantity was zero.
    error OrderZeroQuantity();
    /// @dev `slot`'s book holds `max` orders already, as many as one clearing transaction can verify.
    error OrderBookFull(uint32 slot, uint256 max);
    /// @dev Slots must divide the day and the gate must close within the day before (seconds given).
    error MarketBadTiming(uint256 slotSeconds, uint256 gateLeadSeconds);
    /// @dev `price` is outside the regulator's bounds [`floor`, `cap`].
    error OrderPriceOutOfBounds(uint256 price, uint256 floor, uint256 cap);
    /// @dev Orders for `slot` closed at `closedAt`.
    error OrderGateClosed(uint32 slot, uint256 closedAt);
    /// @dev `account` is not an active participant (unknown, suspended, or the slack unit).
    error OrderNotAllowed(address account);
    /// @dev The escrow of `needed` base units exceeds the allowance `allowance` given to the market.
    error OrderInsufficientAllowance(uint256 needed, uint256 allowance);
    /// @dev `caller` is not the meter agent registered for `account`.
    error OrderNotAgent(address account, address caller);
    /// @dev `account` has an order in `slot` already: change or cancel it.
    error OrderExists(address account, uint32 slot);
    /// @dev `account` has no order in `slot`.
    error OrderNotFound(address account, uint32 slot);
    /// @dev An order cannot change side; cancel it and place a new one.
    error OrderSideChanged(address account, uint32 slot);
    /// @dev `slot` cannot be cleared before its gate closes at `closesAt`.
    error ClearingGateOpen(uint32 slot, uint256 closesAt);
    /// @dev `slot` started at `startedAt`; it can no longer be cleared (its orders are reclaimable).
    error ClearingTooLate(uint32 slot, uint256 startedAt);
    /// @dev `slot` is cleared already.
    error ClearingAlreadyDone(uint32 slot);
    /// @dev The clearing lists `given` orders, the book has `expected`.
    error ClearingIncomplete(uint256 given, uint256 expected);
    /// @dev `account` is listed twice, has no order in the slot, or is on the wrong side.
    error ClearingWrongOrder(address account);
    /// @dev The list is not sorted by price (then book index) at position `position` of the buy (or sell) side.
    error ClearingNotSorted(bool sellSide, uint256 position);
    /// @dev The award list lengths differ from the order lists.
    error ClearingLengthMismatch();
    /// @dev The claimed price or volume is not the auction's: `expected` vs `given`.
    error ClearingWrongResult(uint256 expectedPrice, uint256 givenPrice, uint256 expectedVolumeWh, uint256 givenVolumeWh);
    /// @dev The award of `account` should be `expected`, not `given`.
    error ClearingWrongAward(address account, uint256 expected, uint256 given);
    /// @dev `slot` has not started yet, or was cleared: its escrow cannot be reclaimed.
    error ReclaimNotAllowed(uint32 slot);
    /// @dev `qtyWh` is above the largest order `max`.
    error OrderQuantityTooLarge(uint256 qtyWh, uint256 max);
    /// @dev Lists of different lengths.
    error ActivationsLengthMismatch(uint256 accounts, uint256 activations);
    /// @dev Price bounds must satisfy 0 < floor <= cap <= 2^28.
    error MarketBadBounds(uint256 floor, uint256 cap);
    /// @dev An address that must be set was zero.
    error MarketZeroAddress();

    /// @notice `account` placed or changed its order in `slot`; `escrow` is what the market now holds for it.
    event OrderPlaced(address indexed account, uint32 indexed slot, bool isSell, uint256 qtyWh, uint256 price, uint256 escrow);
    /// @notice `account` cancelled its order in `slot`, and got `refund` back.
    event OrderCancelled(address indexed account, uint32 indexed slot, uint256 refund);
    /// @notice `slot` was cleared at `price` with `volumeWh` traded among `orders` orders, by `clearer`.
    event SlotCleared(uint32 indexed slot, uint256 price, uint256 volumeWh, uint256 orders, address clearer);
    /// @notice Escrow of an order in a slot that nobody cleared went back to its owner.
    event EscrowReclaimed(address indexed account, uint32 indexed slot, uint256 refund);
    /// @notice The regulator set the price bounds of orders.
    event BoundsSet(uint256 floor, uint256 cap);
    /// @notice The balancing market `market` added the activations of `count` participants to their schedules in `slot`.
    event ActivationsRecorded(uint32 indexed slot, address indexed market, uint256 count);

    /// @notice Places one order, escrowing a buy's worst case (quantity times limit) from the caller.
    function placeOrder(OrderInput calldata order) external;

    /// @notice Places or changes several orders (e.g. a day's 96 slots) with one escrow transfer.
    function placeOrders(OrderInput[] calldata orders) external;

    /// @notice Places or changes orders for `account`, sent by its meter agent (the meter key the
    /// registry holds for it). Escrow moves from and to `account`, which must have approved this market.
    function placeOrdersFor(address account, OrderInput[] calldata orders) external;

    /// @notice Changes the quantity and price of the caller's order in `slot`; escrow follows in the same transaction.
    function changeOrder(OrderInput calldata order) external;

    /// @notice Cancels the caller's order in `slot` and refunds its escrow.
    function cancelOrder(uint32 slot) external;

    /// @notice Verifies and applies a clearing computed off chain. Anyone may submit one; only the correct one is accepted.
    function clear(Clearing calldata clearing) external;

    /// @notice Refunds the escrow of `accounts`' buy orders in a slot that started without being cleared.
    function reclaim(uint32 slot, address[] calldata accounts) external;

    /// @notice Sets the price bounds of orders. Only the regulator.
    function setBounds(uint256 floor, uint256 cap) external;


    /// @notice The order of `account` in `slot`.
    function orderOf(uint32 slot, address account) external view returns (Order memory);

    /// @notice The book of `slot`.
    function book(uint32 slot) external view returns (BookView memory);

    /// @notice When orders for `slot` close.
    function gateClosure(uint32 slot) external view returns (uint256);
}
