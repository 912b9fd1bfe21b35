// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {IScheduleSink, IScheduleSource} from "../settlement/IScheduleSink.sol";
import {IDayAheadMarket} from "./IDayAheadMarket.sol";

/**
 * @title DayAheadMarket
 * @notice The day-ahead double auction: for each slot of day D, participants place one buy or
 * sell order each until gate closure (default 12:00 UTC on D-1); a buy escrows its worst case,
 * quantity times limit price. After gate closure anyone may clear the slot with a result
 * computed off chain, which the contract verifies in one pass and accepts only if correct.
 *
 * @dev The auction (pay-as-clear, uniform price). Buys sorted by limit descending, sells
 * ascending, ties by book index (first placement first: time priority). Walking both lists,
 * the best remaining buy is matched with the best remaining sell for as long as the buy's
 * limit is at least the sell's; each match is as large as the smaller remainder. So an order
 * is awarded fully, partly (only the last matched order of each side) or not at all, and
 * among orders at the same marginal price the earlier one is filled first. The volume is the
 * sum of matches; the price is the midpoint, rounded down, of the limits of the last matched
 * buy and sell, so every awarded buy pays at most its limit and every awarded sell gets at
 * least its limit.
 *
 * Edge cases: no crossing (or an empty side): volume 0, price 0, every escrow returned. Equal
 * limits on both sides: that price. A cancelled order stays in the book with quantity 0 and is
 * never awarded. Energy is in whole Wh, so buy and sell awards add up to the same volume and
 * no energy dust exists; money: a buyer's cost is ceil(award * price / 1000), its escrow
 * ceil(qty * limit / 1000), the difference is refunded at clearing and the cost goes to
 * settlement, which pays sellers floor(award * price / 1000) and hands the rounding
 * remainder to the slack unit with the rest of the slot's residual.
 *
 * Bounds: order limits must lie in [priceFloor, priceCap], the slack unit's standing prices
 * (feed-in and retail), so the clearing price lies there too; energy not matched locally is
 * bought from or sold to the slack unit in real time at its prices.
 *
 * Fallback: a slot nobody cleared before it started has no day-ahead trade: its buyers take
 * their escrow back with `reclaim`, and settlement treats the slot as unscheduled.
 *
 * Escrow: this contract always holds exactly `totalEscrow`, the sum of open buy escrows.
 */
contract DayAheadMarket is IDayAheadMarket, AccessControl {
    using SafeERC20 for IERC20;

    /// @notice Role allowed to set price bounds.
    bytes32 public constant REGULATOR_ROLE = keccak256("REGULATOR_ROLE");
    /// @notice Role of the balancing market: may add activations to schedules.
    bytes32 public constant BALANCING_ROLE = keccak256("BALANCING_ROLE");
    /// @notice Most orders one slot's book takes, so that its clearing fits one transaction (2^24 gas).
    uint256 public constant MAX_BOOK_SIZE = 1000;
    /// @notice Largest order, in Wh (16.7 MWh in a quarter hour, 67 MW: beyond any feeder), so that
    /// schedules, deviations and earnings always fit settlement's packed account record.
    uint256 public constant MAX_ORDER_WH = 2 ** 24;
    /// @notice Highest price bound (about 268 tokens per kWh), for the same reason.
    uint256 public constant MAX_PRICE = 2 ** 28;

    struct Book {
        uint32 size;
        bool cleared;
        uint48 price;
        uint64 volumeWh;
        uint96 escrow;
    }

    IERC20 public immutable token;
    IParticipantRegistry public immutable registry;
    /// @notice Where the cost of scheduled energy goes at clearing, to pay sellers at delivery.
    IScheduleSink public immutable settlement;
    uint256 public immutable slotSeconds;
    /// @notice Seconds before the start of day D at which orders for D close (12 h: 12:00 UTC on D-1).
    uint256 public immutable gateLeadSeconds;
    uint48 public priceFloor;
    uint48 public priceCap;
    /// @notice Sum of all open buy escrows; the token balance of this contract.
    uint256 public totalEscrow;

    mapping(uint32 slot => mapping(address account => Order)) private _orders;
    mapping(uint32 slot => Book) private _books;

    constructor(
        IERC20 token_,
        IParticipantRegistry registry_,
        IScheduleSink settlement_,
        address admin,
        uint256 slotSeconds_,
        uint256 gateLeadSeconds_,
        uint256 floor_,
        uint256 cap_
    ) {
        if (address(token_) == address(0) || address(registry_) == address(0) || address(settlement_) == address(0) || admin == address(0)) {
            revert MarketZeroAddress();
        }
        token = token_;
        registry = registry_;
        settlement = settlement_;
        // Whole slots per day, and a gate that closes before the day starts but not a day early.
        if (slotSeconds_ == 0 || 1 days % slotSeconds_ != 0 || gateLeadSeconds_ == 0 || gateLeadSeconds_ > 1 days) {
            revert MarketBadTiming(slotSeconds_, gateLeadSeconds_);
        }
        slotSeconds = slotSeconds_;
        gateLeadSeconds = gateLeadSeconds_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGULATOR_ROLE, admin);
        _setBounds(floor_, cap_);
    }

    // ---------------------------------------------------------------- orders

    /// @inheritdoc IDayAheadMarket
    function placeOrder(OrderInput calldata input) external {
        _checkTrader(msg.sender);
        uint256 escrow = _place(msg.sender, input, false);
        _collect(msg.sender, escrow);
    }

    /// @notice Places one order, approving the escrow with an EIP-2612 permit for `value`.
    function placeOrderWithPermit(OrderInput calldata input, uint256 value, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external {
        // A permit front-run by someone else has already set the allowance: go on with it.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), value, deadline, v, r, s) {} catch {}
        _checkTrader(msg.sender);
        uint256 escrow = _place(msg.sender, input, false);
        _collect(msg.sender, escrow);
    }

    /// @inheritdoc IDayAheadMarket
    function placeOrders(OrderInput[] calldata inputs) external {
        _checkTrader(msg.sender);
        _placeMany(msg.sender, inputs);
    }

    /// @inheritdoc IDayAheadMarket
    function placeOrdersFor(address account, OrderInput[] calldata inputs) external {
        (address meterKey,,) = registry.signerOf(account);
        if (msg.sender != meterKey) revert OrderNotAgent(account, msg.sender);
        _checkTrader(account);
        _placeMany(account, inputs);
    }

    /// @inheritdoc IDayAheadMarket
    function changeOrder(OrderInput calldata input) external {
        _checkTrader(msg.sender);
        Order storage o = _orders[input.slot][msg.sender];
        if (!o.placed || o.qtyWh == 0) revert OrderNotFound(msg.sender, input.slot);
        int256 delta = _change(msg.sender, input, o);
        if (delta > 0) _collect(msg.sender, uint256(delta));
        else if (delta < 0) token.safeTransfer(msg.sender, uint256(-delta));
    }

    /// @inheritdoc IDayAheadMarket
    function cancelOrder(uint32 slot) external {
        _checkOpen(slot);
        Order storage o = _orders[slot][msg.sender];
        if (!o.placed || o.qtyWh == 0) revert OrderNotFound(msg.sender, slot);
        uint256 refund = o.isSell ? 0 : _escrowOf(o.qtyWh, o.price);
        o.qtyWh = 0; // stays in the book, as an order of nothing
        _release(slot, refund);
        emit OrderCancelled(msg.sender, slot, refund);
        if (refund > 0) token.safeTransfer(msg.sender, refund);
    }

    // ---------------------------------------------------------------- clearing

    /// @inheritdoc IDayAheadMarket
    function clear(Clearing calldata c) external {
        uint32 slot = c.slot;
        Book storage b = _books[slot];
        uint256 closesAt = gateClosure(slot);
        uint256 startsAt = uint256(slot) * slotSeconds;
        if (block.timestamp < closesAt) revert ClearingGateOpen(slot, closesAt);
        if (block.timestamp >= startsAt) revert ClearingTooLate(slot, startsAt);
        if (b.cleared) revert ClearingAlreadyDone(slot);
        uint256 nb = c.buyers.length;
        uint256 ns = c.sellers.length;
        if (nb + ns != b.size) revert ClearingIncomplete(nb + ns, b.size);
        if (c.buyAwardsWh.length != nb || c.sellAwardsWh.length != ns) revert ClearingLengthMismatch();

        // Load and check both sides: every order once, on its side, sorted.
        uint256[] memory seen = new uint256[](b.size / 256 + 1);
        Order[] memory buys = _load(slot, c.buyers, false, seen);
        Order[] memory sells = _load(slot, c.sellers, true, seen);

        // The auction itself: one merge-walk over the sorted sides.
        uint256[] memory buyAward = new uint256[](nb);
        uint256[] memory sellAward = new uint256[](ns);
        (uint256 volume, uint256 price) = _match(buys, sells, buyAward, sellAward);
        if (price != c.price || volume != c.volumeWh) revert ClearingWrongResult(price, c.price, volume, c.volumeWh);

        // Effects: awards into the orders, the book closed, escrow released.
        uint256 scheduledCost;
        uint256[] memory refunds = new uint256[](nb);
        for (uint256 i = 0; i < nb; ++i) {
            uint256 award = buyAward[i];
            if (award != c.buyAwardsWh[i]) revert ClearingWrongAward(c.buyers[i], award, c.buyAwardsWh[i]);
            uint256 cost = Math.ceilDiv(award * price, 1000);
            refunds[i] = _escrowOf(buys[i].qtyWh, buys[i].price) - cost;
            scheduledCost += cost;
            // No event per order: the awards are in orderOf, refunds show as Transfers, and
            // the ~2k gas per order keeps a full book of 1,000 within one transaction.
            if (award > 0) _orders[slot][c.buyers[i]].awardedWh = uint40(award);
        }
        for (uint256 j = 0; j < ns; ++j) {
            uint256 award = sellAward[j];
            if (award != c.sellAwardsWh[j]) revert ClearingWrongAward(c.sellers[j], award, c.sellAwardsWh[j]);
            if (award > 0) _orders[slot][c.sellers[j]].awardedWh = uint40(award);
        }
        totalEscrow -= b.escrow;
        b.escrow = 0;
        b.cleared = true;
        b.price = uint48(price);
        b.volumeWh = uint64(volume);
        emit SlotCleared(slot, price, volume, nb + ns, msg.sender);

        // Interactions: refunds, and the scheduled energy's cost to settlement.
        for (uint256 i = 0; i < nb; ++i) {
            if (refunds[i] > 0) token.safeTransfer(c.buyers[i], refunds[i]);
        }
        if (scheduledCost > 0) {
            token.safeTransfer(address(settlement), scheduledCost);
            settlement.recordSchedulePayment(slot, scheduledCost);
        }
    }

    /// @inheritdoc IDayAheadMarket
    function reclaim(uint32 slot, address[] calldata accounts) external {
        Book storage b = _books[slot];
        if (b.cleared || block.timestamp < uint256(slot) * slotSeconds) revert ReclaimNotAllowed(slot);
        for (uint256 i = 0; i < accounts.length; ++i) {
            Order storage o = _orders[slot][accounts[i]];
            if (o.isSell || o.qtyWh == 0) continue; // nothing escrowed, or returned already
            uint256 refund = _escrowOf(o.qtyWh, o.price);
            o.qtyWh = 0;
            _release(slot, refund);
            emit EscrowReclaimed(accounts[i], slot, refund);
            token.safeTransfer(accounts[i], refund);
        }
    }

    /// @inheritdoc IDayAheadMarket
    function setBounds(uint256 floor_, uint256 cap_) external onlyRole(REGULATOR_ROLE) {
        _setBounds(floor_, cap_);
    }

    /**
     * @inheritdoc IScheduleSource
     * @dev Kept in the order's own storage word, so that settlement reads a participant's whole
     * schedule (award and activations) with one call and one storage read per reading.
     */
    function recordActivations(uint32 slot, address[] calldata accounts, int256[] calldata activatedWh)
        external
        onlyRole(BALANCING_ROLE)
    {
        if (accounts.length != activatedWh.length) revert ActivationsLengthMismatch(accounts.length, activatedWh.length);
        for (uint256 i = 0; i < accounts.length; ++i) {
            Order storage o = _orders[slot][accounts[i]];
            o.activatedWh = SafeCast.toInt32(o.activatedWh + activatedWh[i]);
        }
        emit ActivationsRecorded(slot, msg.sender, accounts.length);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IScheduleSource
    function scheduleOf(uint32 slot, address account)
        external
        view
        returns (int256 dayAheadWh, uint256 price, int256 activatedWh)
    {
        Order storage o = _orders[slot][account];
        activatedWh = o.activatedWh;
        Book storage b = _books[slot];
        if (!b.cleared) return (0, 0, activatedWh);
        dayAheadWh = o.isSell ? -int256(uint256(o.awardedWh)) : int256(uint256(o.awardedWh));
        price = b.price;
    }

    /// @inheritdoc IDayAheadMarket
    function orderOf(uint32 slot, address account) external view returns (Order memory) {
        return _orders[slot][account];
    }

    /// @inheritdoc IDayAheadMarket
    function book(uint32 slot) external view returns (BookView memory) {
        Book storage b = _books[slot];
        return BookView({size: b.size, cleared: b.cleared, price: b.price, volumeWh: b.volumeWh, escrow: b.escrow});
    }

    /// @inheritdoc IDayAheadMarket
    function gateClosure(uint32 slot) public view returns (uint256) {
        uint256 dayStart = ((uint256(slot) * slotSeconds) / 1 days) * 1 days;
        return dayStart - gateLeadSeconds;
    }

    // ---------------------------------------------------------------- internals

    function _place(address account, OrderInput calldata input, bool batched) private returns (uint256 escrow) {
        _checkOpen(input.slot);
        _checkOrder(input);
        Order storage o = _orders[input.slot][account];
        Book storage b = _books[input.slot];
        if (o.placed) {
            if (o.qtyWh > 0 && !batched) revert OrderExists(account, input.slot);
            // A cancelled order comes back with its old index (time priority).
            o.isSell = input.isSell;
        } else {
            if (b.size >= MAX_BOOK_SIZE) revert OrderBookFull(input.slot, MAX_BOOK_SIZE);
            o.placed = true;
            o.isSell = input.isSell;
            o.index = b.size;
            b.size += 1;
        }
        o.qtyWh = input.qtyWh;
        o.price = input.price;
        escrow = input.isSell ? 0 : _escrowOf(input.qtyWh, input.price);
        if (escrow > 0) {
            b.escrow += uint96(escrow);
            totalEscrow += escrow;
        }
        emit OrderPlaced(account, input.slot, input.isSell, input.qtyWh, input.price, escrow);
    }

    /// @dev Returns the change of escrow (+ to collect, - to refund).
    function _change(address account, OrderInput calldata input, Order storage o) private returns (int256 delta) {
        _checkOpen(input.slot);
        _checkOrder(input);
        if (o.isSell != input.isSell) revert OrderSideChanged(account, input.slot);
        uint256 before = o.isSell ? 0 : _escrowOf(o.qtyWh, o.price);
        uint256 escrow = o.isSell ? 0 : _escrowOf(input.qtyWh, input.price);
        o.qtyWh = input.qtyWh;
        o.price = input.price;
        Book storage b = _books[input.slot];
        if (escrow >= before) {
            b.escrow += uint96(escrow - before);
            totalEscrow += escrow - before;
        } else {
            _release(input.slot, before - escrow);
        }
        delta = int256(escrow) - int256(before);
        emit OrderPlaced(account, input.slot, input.isSell, input.qtyWh, input.price, escrow);
    }

    /// @dev Places or changes each order; the escrow moves once, from or to `account`.
    function _placeMany(address account, OrderInput[] calldata inputs) private {
        int256 net;
        for (uint256 i = 0; i < inputs.length; ++i) {
            OrderInput calldata input = inputs[i];
            Order storage o = _orders[input.slot][account];
            if (o.placed && o.qtyWh > 0) net += _change(account, input, o);
            else net += int256(_place(account, input, true));
        }
        if (net > 0) _collect(account, uint256(net));
        else if (net < 0) token.safeTransfer(account, uint256(-net));
    }

    function _release(uint32 slot, uint256 amount) private {
        _books[slot].escrow -= uint96(amount);
        totalEscrow -= amount;
    }

    function _collect(address account, uint256 amount) private {
        if (amount == 0) return;
        uint256 allowance = token.allowance(account, address(this));
        if (allowance < amount) revert OrderInsufficientAllowance(amount, allowance);
        token.safeTransferFrom(account, address(this), amount);
    }

    function _checkTrader(address account) private view {
        (, IParticipantRegistry.Kind kind, IParticipantRegistry.Status status) = registry.signerOf(account);
        if (status != IParticipantRegistry.Status.Active || kind == IParticipantRegistry.Kind.SlackUnit) {
            revert OrderNotAllowed(account);
        }
    }

    function _checkOpen(uint32 slot) private view {
        uint256 closesAt = gateClosure(slot);
        if (block.timestamp >= closesAt) revert OrderGateClosed(slot, closesAt);
    }

    function _checkOrder(OrderInput calldata input) private view {
        if (input.qtyWh == 0) revert OrderZeroQuantity();
        if (input.qtyWh > MAX_ORDER_WH) revert OrderQuantityTooLarge(input.qtyWh, MAX_ORDER_WH);
        if (input.price < priceFloor || input.price > priceCap) revert OrderPriceOutOfBounds(input.price, priceFloor, priceCap);
    }

    function _escrowOf(uint256 qtyWh, uint256 price) private pure returns (uint256) {
        return Math.ceilDiv(qtyWh * price, 1000);
    }

    /// @dev Loads one side's orders, checking side, uniqueness (bitmap of book indices) and order.
    function _load(uint32 slot, address[] calldata accounts, bool sellSide, uint256[] memory seen)
        private
        view
        returns (Order[] memory orders)
    {
        orders = new Order[](accounts.length);
        for (uint256 k = 0; k < accounts.length; ++k) {
            Order memory o = _orders[slot][accounts[k]];
            if (!o.placed || o.isSell != sellSide) revert ClearingWrongOrder(accounts[k]);
            uint256 word = o.index >> 8;
            uint256 bit = 1 << (o.index & 255);
            if (seen[word] & bit != 0) revert ClearingWrongOrder(accounts[k]);
            seen[word] |= bit;
            if (k > 0) {
                Order memory prev = orders[k - 1];
                bool better = sellSide ? prev.price < o.price : prev.price > o.price;
                if (!better && (prev.price != o.price || prev.index > o.index)) revert ClearingNotSorted(sellSide, k);
            }
            orders[k] = o;
        }
    }

    /// @dev The merge-walk of the auction (see the contract's NatSpec).
    function _match(Order[] memory buys, Order[] memory sells, uint256[] memory buyAward, uint256[] memory sellAward)
        private
        pure
        returns (uint256 volume, uint256 price)
    {
        uint256 i;
        uint256 j;
        uint256 remB = buys.length > 0 ? buys[0].qtyWh : 0;
        uint256 remS = sells.length > 0 ? sells[0].qtyWh : 0;
        uint256 lastBuyPrice;
        uint256 lastSellPrice;
        while (i < buys.length && j < sells.length) {
            if (remB == 0) {
                if (++i < buys.length) remB = buys[i].qtyWh;
                continue;
            }
            if (remS == 0) {
                if (++j < sells.length) remS = sells[j].qtyWh;
                continue;
            }
            if (buys[i].price < sells[j].price) break;
            uint256 m = Math.min(remB, remS);
            buyAward[i] += m;
            sellAward[j] += m;
            volume += m;
            remB -= m;
            remS -= m;
            lastBuyPrice = buys[i].price;
            lastSellPrice = sells[j].price;
        }
        price = volume == 0 ? 0 : (lastBuyPrice + lastSellPrice) / 2;
    }

    function _setBounds(uint256 floor_, uint256 cap_) private {
        if (floor_ == 0 || floor_ > cap_ || cap_ > MAX_PRICE) revert MarketBadBounds(floor_, cap_);
        priceFloor = uint48(floor_);
        priceCap = uint48(cap_);
        emit BoundsSet(floor_, cap_);
    }
}
