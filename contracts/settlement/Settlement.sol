// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IMeterLedger} from "../metering/IMeterLedger.sol";
import {MeterLedger} from "../metering/MeterLedger.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {ISettlement} from "./ISettlement.sol";
import {IBalancingSource, IScheduleSink, IScheduleSource} from "./IScheduleSink.sol";

/**
 * @title Settlement
 * @notice Escrow of billing deposits, meter readings (via MeterLedger) and the settlement of
 * every slot in energy tokens.
 *
 * @dev Positions and deviations. Each reading gives a participant's metered net energy
 * n = import - export in slot S. Its position is its schedule q from the markets (day-ahead
 * awards: + bought, - sold; 0 without markets or trade), and its deviation is d = n - q.
 * Scheduled energy is settled at the price it was traded at: a buyer paid for it at clearing
 * (the market moved that money into this slot's pool), a seller is paid floor(|q| * P / 1000)
 * from the pool when it is billed. Deviations are settled at the real-time price below.
 *
 * Real-time pricing of deviations in S. D is the sum of positive d (demand), U the sum of -d
 * over negative d (supply). The real-time price is
 *
 *     p = feedIn + (retail - feedIn) * D / (D + U)      (midpoint when D + U = 0),
 *
 * rounded down: plenty of local supply pulls it to the feed-in price, scarcity to retail.
 * Local energy, L = min(D, U), is shared pro rata: a buyer gets floor(d * L / D) Wh locally at
 * p and the rest from the slack unit at `retailPrice`; a seller sells floor(-d * L / U) Wh
 * locally at p and the rest to the slack unit at `feedInPrice`. Buyers' bills round up and
 * sellers' revenues round down (token base units, prices per kWh, energy in Wh).
 *
 * Money: buyers pay from their deposit into the slot's pool; sellers are paid from the pool
 * into their deposit, which they withdraw to their wallet whenever they like (`withdraw`):
 * pull rather than push payments, so that a batch of a thousand readings makes no token call
 * at all and neither a recipient nor escrow liquidity can make it fail. A seller in debt repays
 * the debt first. When every reading of S is billed the slot closes and the slack unit, the
 * supplier and buyer of last resort, takes the pool's residual: what buyers paid for slack
 * energy, minus what it owes sellers for their surplus, plus rounding dust. A positive
 * residual first pays off the slack unit's own uncovered debt and goes into its deposit; a
 * negative one comes out of its deposit. So tokens are only ever moved, never made.
 * A buyer whose deposit is short pays what it has; the shortfall is recorded as its debt, it
 * is flagged (ParticipantInDebt), and since the slack unit's residual is smaller by exactly
 * that much, the debt is owed to the slack unit: later deposits repay it there first.
 *
 * Energy: the slack unit supplied D - Lb and absorbed U - Lb, where Lb is the deviation energy
 * buyers bought locally; so D = U + supplied - absorbed exactly. Scheduled energy balances by
 * itself: the day-ahead awards of buyers and sellers are equal.
 *
 * Accounting identity, always: token.balanceOf(this) + badDebt == totalDeposits + openPool,
 * where openPool is the sum of the pools of open slots (briefly negative while sellers are
 * paid before the buyers of the same slot are billed) and badDebt is what the slack unit
 * itself could not cover.
 *
 * Billing of S happens in one of two ways, whichever comes first, and never twice: the
 * meter's next reading bills S on its way in (the common case, so one storage write per
 * participant per slot does both), or anyone calls `settle(S, accounts)` after S's deadline.
 *
 * Gas: a transaction (a batch of readings, a settle, a withdrawal) works on a memory copy of the
 * totals of the slots it touches (`Batch`) and stores them, openPool and totalDeposits once at
 * its end; each account is one storage word read and written once; a participant's whole
 * schedule (day-ahead award and activations) is one call to the day-ahead market.
 */
contract Settlement is ISettlement, IScheduleSink, MeterLedger, AccessControl {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    /// @notice Role allowed to set prices.
    bytes32 public constant REGULATOR_ROLE = keccak256("REGULATOR_ROLE");
    /// @notice Role of the master agent: may request readings, nothing that moves money.
    bytes32 public constant MASTER_ROLE = keccak256("MASTER_ROLE");
    /// @notice Role of the markets: may pay the cost of scheduled energy into a slot's pool.
    bytes32 public constant MARKET_ROLE = keccak256("MARKET_ROLE");
    /// @dev About 268 tokens per kWh: with the markets' largest order (2^24 Wh) a reading's
    /// scheduled earnings over MAX_SCHEDULE_GAP slots stay within the account's 48 bits.
    uint256 private constant MAX_PRICE = 2 ** 28;

    /// @dev Two storage slots per market slot, shared by all its participants.
    struct SlotState {
        uint40 demandWh; // positive deviations
        uint40 supplyWh; // negative deviations
        uint40 localWh; // deviation energy bought locally by buyers so far
        uint32 readings;
        uint32 billed;
        bool priced;
        bool closed;
        bool balancingRead; // the intra-day result below has been read
        uint48 price;
        uint48 feedInPrice;
        uint48 retailPrice;
        int112 pool;
        uint40 upWh; // intra-day: upward flexibility activated (the system bought it)
        uint40 downWh; // intra-day: downward flexibility activated (the system sold it)
        uint48 upPrice;
        uint48 downPrice;
    }

    /// @dev One slot's totals, copied to memory for a batch.
    struct CachedSlot {
        bool used;
        uint32 slot;
        SlotState s;
    }

    /**
     * @dev What one transaction's readings (or settle, or withdrawal) change in shared state,
     * kept in memory and stored once at its end: the totals of up to two slots (the one read and
     * the one billed), and the changes of the contract's sums.
     */
    struct Batch {
        CachedSlot first;
        CachedSlot second;
        bool firstIsNewer;
        int256 poolChange; // of openPool
        int256 depositChange; // of totalDeposits
        uint256 slackPayout; // what the slack unit's deposit cannot hold (48 bits), transferred last
        IScheduleSource dayAhead;
        IBalancingSource intraday;
    }

    /// @notice The energy token.
    IERC20 public immutable token;
    /// @notice Price the slack unit pays for surplus energy; the floor of the local price (base units per kWh).
    uint64 public feedInPrice;
    /// @notice Price the slack unit charges; the cap of the local price (base units per kWh).
    uint64 public retailPrice;
    /// @notice Sum of all deposits.
    uint256 public totalDeposits;
    /// @notice Sum of the pools of open slots.
    int256 public openPool;
    /// @notice What the slack unit owed and could not pay (part of its debt).
    uint256 public badDebt;
    /// @notice Where day-ahead schedules come from, or zero before markets exist.
    IScheduleSource public dayAheadMarket;
    /// @notice Where intra-day activations come from, or zero before the balancing market exists.
    IBalancingSource public intradayMarket;
    /// @notice How many slots back a reading nets schedules when its meter missed readings.
    uint256 public constant MAX_SCHEDULE_GAP = 8;

    mapping(uint32 slot => SlotState) private _slots;
    mapping(address account => uint256) private _debt;

    /**
     * @param token_ The energy token.
     * @param registry_ The participant registry.
     * @param admin Receives DEFAULT_ADMIN_ROLE, REGULATOR_ROLE and MASTER_ROLE.
     * @param slotSeconds_ Slot length in seconds (900).
     * @param readingWindow_ Seconds after a slot's end to submit its readings (less than a slot).
     * @param feedInPrice_ Initial feed-in price, base units per kWh.
     * @param retailPrice_ Initial retail price, base units per kWh.
     */
    constructor(
        IERC20 token_,
        IParticipantRegistry registry_,
        address admin,
        uint256 slotSeconds_,
        uint256 readingWindow_,
        uint256 feedInPrice_,
        uint256 retailPrice_
    ) MeterLedger(registry_, slotSeconds_, readingWindow_) EIP712("ProsumerMarket Settlement", "1") {
        if (address(token_) == address(0) || address(registry_) == address(0) || admin == address(0)) {
            revert SettlementZeroAddress();
        }
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGULATOR_ROLE, admin);
        _grantRole(MASTER_ROLE, admin);
        _setPrices(feedInPrice_, retailPrice_);
    }

    // ---------------------------------------------------------------- deposits

    /// @inheritdoc ISettlement
    function deposit(uint256 amount) external {
        _deposit(msg.sender, msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function depositFor(address account, uint256 amount) external {
        _deposit(account, msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external {
        // A permit front-run by someone else has already set the allowance: go on with it.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(msg.sender, msg.sender, amount);
    }

    /// @inheritdoc ISettlement
    function withdraw(uint256 amount) external {
        if (amount == 0) revert SettlementZeroAmount();
        Batch memory b = _openBatch();
        Account memory a = _loadAccount(msg.sender);
        // A final slot not billed yet is billed first, so the deposit is exact.
        if (_hasPendingBill(a) && block.timestamp > readingDeadline(a.lastSlot)) _bill(b, msg.sender, a);
        uint256 free = _free(a);
        if (amount > free) revert SettlementWithdrawExceedsFree(amount, free);
        a.deposit -= uint48(amount);
        b.depositChange -= int256(amount);
        _storeAccount(msg.sender, a);
        emit Withdrawn(msg.sender, amount);
        _closeBatch(b);
        token.safeTransfer(msg.sender, amount);
    }

    // ---------------------------------------------------------------- readings

    /// @inheritdoc IMeterLedger
    function submitReading(Reading calldata reading, bytes32 r, bytes32 vs) external {
        Batch memory b = _openBatch();
        _record(b, reading, r, vs);
        _closeBatch(b);
    }

    /// @inheritdoc IMeterLedger
    function submitReadings(SignedReading[] calldata readings) external {
        Batch memory b = _openBatch();
        // What one reading allocates in memory is dead once it is recorded (the batch's state was
        // allocated above): reuse it, or memory expansion, quadratic in its size, grows with the batch.
        uint256 freeMemory;
        assembly ("memory-safe") {
            freeMemory := mload(0x40)
        }
        for (uint256 i = 0; i < readings.length; ++i) {
            SignedReading calldata s = readings[i];
            _record(b, s.reading, s.r, s.vs);
            assembly ("memory-safe") {
                mstore(0x40, freeMemory)
            }
        }
        _closeBatch(b);
    }

    // ---------------------------------------------------------------- settlement

    /// @inheritdoc ISettlement
    function settle(uint32 slot, address[] calldata accounts) external {
        uint256 deadline = readingDeadline(slot);
        if (block.timestamp <= deadline) revert SettlementSlotNotFinal(slot, deadline);
        Batch memory b = _openBatch();
        _cached(b, slot); // closes at the end if complete, even with nobody left to bill
        uint256 freeMemory; // reused for every account, as in submitReadings
        assembly ("memory-safe") {
            freeMemory := mload(0x40)
        }
        for (uint256 i = 0; i < accounts.length; ++i) {
            address account = accounts[i];
            Account memory a = _loadAccount(account);
            if (a.lastSlot == slot && _hasPendingBill(a)) {
                _bill(b, account, a);
                _storeAccount(account, a);
            } // else: not in this slot, or billed already
            assembly ("memory-safe") {
                mstore(0x40, freeMemory)
            }
        }
        _closeBatch(b);
    }

    /// @inheritdoc ISettlement
    function setPrices(uint256 feedInPrice_, uint256 retailPrice_) external onlyRole(REGULATOR_ROLE) {
        _setPrices(feedInPrice_, retailPrice_);
    }

    /// @notice Emits ReadingsRequested for an ended `slot`. Only the master.
    function requestReadings(uint32 slot) external onlyRole(MASTER_ROLE) {
        uint256 endsAt = (uint256(slot) + 1) * slotSeconds;
        if (block.timestamp < endsAt) revert ReadingSlotNotEnded(slot, endsAt);
        emit ReadingsRequested(slot, readingDeadline(slot));
    }

    /**
     * @notice Sets the markets whose schedules settlement uses, and lets them pay into slots'
     * pools. Only the admin. Either may be zero (no such market), but a balancing market needs a
     * day-ahead market, whose schedules its activations join.
     * @dev Set before the markets' first slot is read: a reading takes the schedules in force
     * when it arrives.
     */
    function setMarkets(IScheduleSource dayAhead, IBalancingSource intraday) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMarkets(dayAhead, intraday);
    }

    function _setMarkets(IScheduleSource dayAhead, IBalancingSource intraday) private {
        // Activations join the day-ahead market's schedules: no balancing market without one.
        if (address(intraday) != address(0) && address(dayAhead) == address(0)) revert SettlementNoScheduleSource();
        if (address(dayAheadMarket) != address(0)) _revokeRole(MARKET_ROLE, address(dayAheadMarket));
        if (address(intradayMarket) != address(0)) _revokeRole(MARKET_ROLE, address(intradayMarket));
        dayAheadMarket = dayAhead;
        intradayMarket = intraday;
        if (address(dayAhead) != address(0)) _grantRole(MARKET_ROLE, address(dayAhead));
        if (address(intraday) != address(0)) _grantRole(MARKET_ROLE, address(intraday));
        emit MarketsSet(address(dayAhead), address(intraday));
    }

    /// @notice Sets the day-ahead market only (see setMarkets). Only the admin.
    function setScheduleSource(IScheduleSource dayAhead) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setMarkets(dayAhead, intradayMarket);
    }

    /// @inheritdoc IScheduleSink
    function recordSchedulePayment(uint32 slot, uint256 amount) external onlyRole(MARKET_ROLE) {
        SlotState storage s = _slots[slot];
        if (s.closed) revert SettlementSlotClosed(slot);
        s.pool += SafeCast.toInt112(SafeCast.toInt256(amount));
        openPool += int256(amount);
        emit SchedulePaid(slot, msg.sender, amount);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc ISettlement
    function slotState(uint32 slot) external view returns (SlotView memory v) {
        SlotState storage s = _slots[slot];
        v = SlotView({
            demandWh: s.demandWh,
            supplyWh: s.supplyWh,
            localWh: s.localWh,
            readings: s.readings,
            billed: s.billed,
            priced: s.priced,
            closed: s.closed,
            price: s.price,
            feedInPrice: s.feedInPrice,
            retailPrice: s.retailPrice,
            pool: s.pool,
            upWh: s.upWh,
            downWh: s.downWh,
            upPrice: s.upPrice,
            downPrice: s.downPrice
        });
    }

    /// @inheritdoc ISettlement
    function accountState(address account) external view returns (AccountView memory) {
        Account storage a = _accounts[account];
        return AccountView({
            lastSlot: a.lastSlot,
            billed: a.billed,
            importWh: a.importWh,
            exportWh: a.exportWh,
            deviationWh: a.deviationWh,
            earned: a.earned,
            deposit: a.deposit,
            debt: _debt[account]
        });
    }

    /// @inheritdoc ISettlement
    function withdrawable(address account) external view returns (uint256) {
        return _free(_accounts[account]);
    }

    // ---------------------------------------------------------------- billing

    /// @dev Whether `a` has a reading whose energy is not billed yet (an account without any
    /// reading has lastSlot 0 and nothing to bill).
    function _hasPendingBill(Account memory a) private pure returns (bool) {
        return a.lastSlot != 0 && !a.billed;
    }

    /// @dev Reserves the worst case of an unbilled slot: all its positive deviation at the retail price.
    function _free(Account memory a) private view returns (uint256) {
        uint256 reserve;
        if (_hasPendingBill(a) && a.deviationWh > 0) {
            reserve = Math.ceilDiv(uint256(int256(a.deviationWh)) * retailPrice, 1000);
        }
        return a.deposit > reserve ? a.deposit - reserve : 0;
    }

    /// @dev Records one reading: bills the account's previous slot on the way (it is final by
    /// now, since readingWindow < slotSeconds), then counts the new one against its schedules.
    function _record(Batch memory b, Reading calldata rd, bytes32 r, bytes32 vs) private {
        address account = rd.account;
        Account memory a = _loadAccount(account);
        (bool repeat, uint256 importDelta, uint256 exportDelta) = _checkReading(rd, r, vs, a);
        if (repeat) return;
        uint32 lastSlot = a.lastSlot;
        bool baseline = lastSlot == 0;
        if (!baseline && !a.billed) _bill(b, account, a);
        a.lastSlot = rd.slot;
        a.importWh = uint40(rd.importWh);
        a.exportWh = uint40(rd.exportWh);
        a.billed = baseline; // a baseline has nothing to bill
        if (baseline) {
            a.deviationWh = 0;
            a.earned = 0;
        } else {
            _count(b, account, a, lastSlot, int256(importDelta) - int256(exportDelta));
        }
        _storeAccount(account, a);
        emit ReadingRecorded(account, rd.slot, rd.importWh, rd.exportWh, uint32(importDelta), uint32(exportDelta));
    }

    /// @dev Counts `a`'s new reading of net energy `netWh` into its slot's totals, against its
    /// schedules since `lastSlot`: sets its deviation and its scheduled earnings.
    function _count(Batch memory b, address account, Account memory a, uint32 lastSlot, int256 netWh) private {
        uint32 slot = a.lastSlot;
        SlotState memory s = _cached(b, slot);
        IScheduleSource dayAhead = b.dayAhead;
        IBalancingSource intraday = b.intraday;
        if (address(intraday) != address(0) && !s.balancingRead) {
            (uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice) = intraday.slotResult(slot);
            s.balancingRead = true;
            s.upWh = uint40(upWh);
            s.downWh = uint40(downWh);
            s.upPrice = uint48(upPrice);
            s.downPrice = uint48(downPrice);
        }
        int256 scheduled;
        uint256 earned;
        if (address(dayAhead) != address(0)) {
            // A reading after missed ones carries their energy too, so it is netted against their
            // schedules as well (up to MAX_SCHEDULE_GAP slots back): nothing scheduled is billed twice.
            uint256 gap = Math.min(slot - lastSlot, MAX_SCHEDULE_GAP);
            for (uint32 k = slot + 1 - uint32(gap); k <= slot; ++k) {
                (int256 q, uint256 price, int256 activated) = dayAhead.scheduleOf(k, account);
                scheduled += q + activated;
                if (q < 0) earned += uint256(-q) * price / 1000;
                // Upward activations sell at the slot's upward balancing price.
                if (activated < 0) earned += uint256(-activated) * _upPrice(intraday, k, slot, s) / 1000;
            }
        }
        int256 deviationWh = netWh - scheduled;
        if (deviationWh > 0) s.demandWh += uint40(uint256(deviationWh));
        else if (deviationWh < 0) s.supplyWh += uint40(uint256(-deviationWh));
        unchecked {
            s.readings += 1; // one per participant
        }
        a.deviationWh = SafeCast.toInt32(deviationWh);
        a.earned = SafeCast.toUint48(earned);
    }

    /// @dev The upward balancing price of slot `k`: cached for the slot being read, asked otherwise.
    function _upPrice(IBalancingSource intraday, uint32 k, uint32 slot, SlotState memory s) private view returns (uint256) {
        if (k == slot) return s.upPrice;
        if (address(intraday) == address(0)) return 0;
        (,, uint256 upPrice,) = intraday.slotResult(k);
        return upPrice;
    }

    /// @dev Bills `a`'s pending slot (`a.lastSlot`, not yet billed) into `a`, in memory.
    function _bill(Batch memory b, address account, Account memory a) private {
        uint32 slot = a.lastSlot;
        SlotState memory s = _cached(b, slot);
        if (!s.priced) _price(slot, s);
        int256 deviation = a.deviationWh;
        // What the pool owes the account: its scheduled sales (buyers paid for them when the
        // markets cleared)...
        uint256 earned = a.earned;
        uint256 netted; // ...of which this much pays the account's own deviation bill
        int256 amount;
        uint256 shortfall;
        // The real-time market: the slot's activated flexibility is supply (up) or demand
        // (down) of the system, alongside the deviations.
        uint256 demand = uint256(s.demandWh) + s.downWh;
        uint256 supply = uint256(s.supplyWh) + s.upWh;
        uint256 local = Math.min(demand, supply);
        // Bounded operands (deviation 32 bits, prices 48, energies 41): no overflow to check.
        unchecked {
            if (deviation > 0) {
                uint256 n = uint256(deviation);
                uint256 localWh = n * local / demand;
                // Short system (upward flexibility bought): a deviation up pays at least that price.
                uint256 price = s.upWh > 0 ? Math.max(s.price, s.upPrice) : s.price;
                uint256 cost = Math.ceilDiv(localWh * price + (n - localWh) * s.retailPrice, 1000);
                uint256 paid = Math.min(cost, uint256(a.deposit) + earned);
                netted = Math.min(paid, earned);
                a.deposit -= uint48(paid - netted); // paid <= deposit + earned
                b.depositChange -= int256(paid - netted);
                s.localWh = SafeCast.toUint40(uint256(s.localWh) + localWh);
                s.pool += int112(int256(paid)); // |pool| < 2^80: readings * 2^31 Wh * 2^48 / 1000
                b.poolChange += int256(paid);
                amount = int256(cost);
                shortfall = cost - paid;
            } else if (deviation < 0) {
                uint256 n = uint256(-deviation);
                uint256 localWh = n * local / supply;
                // Long system (downward flexibility sold): a deviation down gets at most that price.
                uint256 price = s.downWh > 0 ? Math.min(s.price, s.downPrice) : s.price;
                uint256 revenue = (localWh * price + (n - localWh) * s.feedInPrice) / 1000;
                earned += revenue;
                amount = -int256(revenue);
            }
        }
        if (shortfall > 0) {
            uint256 debt = _debt[account] + shortfall;
            _debt[account] = debt;
            a.inDebt = true;
            emit ParticipantInDebt(account, slot, shortfall, debt);
        }
        if (earned > 0) {
            s.pool -= int112(int256(earned));
            b.poolChange -= int256(earned);
        }
        unchecked {
            s.billed += 1; // at most readings
        }
        a.billed = true;
        emit Billed(account, slot, deviation, a.earned, amount, shortfall);
        uint256 payout = earned - netted;
        if (payout > 0) _payOut(b, account, a, payout);
    }

    /// @dev Pays `amount` from a pool into `a`'s deposit: its debt first, if it has any.
    function _payOut(Batch memory b, address account, Account memory a, uint256 amount) private {
        if (a.inDebt) {
            (uint256 repaid, bool cleared) = _repayDebt(account, amount);
            a.inDebt = !cleared;
            amount -= repaid;
            b.slackPayout += _paySlack(_slackUnit(), repaid); // the slack unit had covered it
        }
        uint256 room = type(uint48).max - a.deposit;
        if (amount > room) {
            // A deposit beyond 48 bits (about 281 million tokens) cannot be stored: the excess goes
            // to the wallet rather than failing everyone's batch. The token is the market's own.
            token.safeTransfer(account, amount - room);
            amount = room;
        }
        a.deposit += uint48(amount);
        b.depositChange += int256(amount);
    }

    /// @dev A batch with the markets read once and nothing cached yet.
    function _openBatch() private view returns (Batch memory b) {
        b.dayAhead = dayAheadMarket;
        b.intraday = intradayMarket;
    }

    /**
     * @dev `slot`'s totals in `b`, loaded from storage if not cached. Of two cached slots the
     * one used less recently is stored (and closed if complete) to make room.
     */
    function _cached(Batch memory b, uint32 slot) private returns (SlotState memory) {
        if (b.first.used && b.first.slot == slot) {
            b.firstIsNewer = true;
            return b.first.s;
        }
        if (b.second.used && b.second.slot == slot) {
            b.firstIsNewer = false;
            return b.second.s;
        }
        bool intoFirst = !b.firstIsNewer;
        CachedSlot memory c = intoFirst ? b.first : b.second;
        if (c.used) _store(b, c);
        c.used = true;
        c.slot = slot;
        _load(c.s, _slots[slot]);
        b.firstIsNewer = intoFirst;
        return c.s;
    }

    /// @dev Copies `stored` into `s`, memory the batch allocated before its loop (see submitReadings).
    function _load(SlotState memory s, SlotState storage stored) private view {
        SlotState memory t = stored;
        s.demandWh = t.demandWh;
        s.supplyWh = t.supplyWh;
        s.localWh = t.localWh;
        s.readings = t.readings;
        s.billed = t.billed;
        s.priced = t.priced;
        s.closed = t.closed;
        s.balancingRead = t.balancingRead;
        s.price = t.price;
        s.feedInPrice = t.feedInPrice;
        s.retailPrice = t.retailPrice;
        s.pool = t.pool;
        s.upWh = t.upWh;
        s.downWh = t.downWh;
        s.upPrice = t.upPrice;
        s.downPrice = t.downPrice;
    }

    /// @dev Stores the cached slots and the sums (and transfers to the slack unit what its deposit cannot hold).
    function _closeBatch(Batch memory b) private {
        if (b.first.used) _store(b, b.first);
        if (b.second.used) _store(b, b.second);
        openPool += b.poolChange;
        totalDeposits = uint256(int256(totalDeposits) + b.depositChange);
        if (b.slackPayout > 0) token.safeTransfer(_slackUnit(), b.slackPayout);
    }

    /// @dev Closes a cached slot if every reading of it is billed, and stores it.
    function _store(Batch memory b, CachedSlot memory c) private {
        SlotState memory s = c.s;
        if (!s.closed && s.billed >= s.readings && !(s.readings == 0 && s.pool == 0)) _close(b, c.slot, s);
        _slots[c.slot] = s;
    }

    /// @dev Fixes a slot's prices from its final totals, at its first billing.
    function _price(uint32 slot, SlotState memory s) private {
        uint256 demand = uint256(s.demandWh) + s.downWh;
        uint256 supply = uint256(s.supplyWh) + s.upWh;
        uint256 feedIn = feedInPrice;
        uint256 retail = retailPrice;
        uint256 price = demand + supply == 0
            ? (feedIn + retail) / 2
            : feedIn + (retail - feedIn) * demand / (demand + supply);
        s.priced = true;
        s.price = uint48(price);
        s.feedInPrice = uint48(feedIn);
        s.retailPrice = uint48(retail);
        emit SlotPriced(slot, price, demand, supply);
    }

    /// @dev Settles a complete slot's pool residual with the slack unit.
    function _close(Batch memory b, uint32 slot, SlotState memory s) private {
        address slack = _slackUnit();
        int256 residual = s.pool;
        // The system's own flexibility trades take their pro-rata local share too.
        uint256 demand = uint256(s.demandWh) + s.downWh;
        uint256 supply = uint256(s.supplyWh) + s.upWh;
        uint256 localWh = s.localWh + (demand == 0 ? 0 : uint256(s.downWh) * Math.min(demand, supply) / demand);
        s.closed = true;
        s.pool = 0;
        b.poolChange -= residual;
        emit SlotClosed(slot, localWh, demand - localWh, supply - localWh, residual);
        if (residual > 0) {
            // Into its deposit, like any seller's earnings: a batch then makes no token transfer,
            // so neither escrow liquidity nor a recipient can hold up everyone's readings.
            b.slackPayout += _paySlack(slack, uint256(residual));
        } else if (residual < 0) {
            uint256 owed = uint256(-residual);
            Account storage sa = _accounts[slack];
            uint256 paid = Math.min(owed, sa.deposit);
            sa.deposit -= uint48(paid);
            b.depositChange -= int256(paid);
            if (paid < owed) {
                uint256 shortfall = owed - paid;
                badDebt += shortfall;
                uint256 debt = _debt[slack] + shortfall;
                _debt[slack] = debt;
                sa.inDebt = true;
                emit ParticipantInDebt(slack, slot, shortfall, debt);
            }
        }
    }

    function _slackUnit() private view returns (address slack) {
        slack = registry.slackUnit();
        if (slack == address(0)) revert SettlementNoSlackUnit();
    }

    // ---------------------------------------------------------------- internals

    function _deposit(address account, address from, uint256 amount) private {
        if (amount == 0) revert SettlementZeroAmount();
        if (registry.participant(account).status == IParticipantRegistry.Status.None) {
            revert SettlementNotRegistered(account);
        }
        uint256 slackExcess = _credit(account, amount);
        emit Deposited(account, from, amount);
        token.safeTransferFrom(from, address(this), amount);
        if (slackExcess > 0) token.safeTransfer(_slackUnit(), slackExcess);
    }

    /**
     * @dev Credits `amount` to `account`'s deposit, repaying its debt first: a participant's
     * debt to the slack unit's deposit, the slack unit's own uncovered debt to escrow. Returns
     * what the slack unit's deposit could not hold of such a repayment, for the caller to
     * transfer to it last.
     */
    function _credit(address account, uint256 amount) private returns (uint256 slackExcess) {
        (uint256 repaid, bool cleared) = _repayDebt(account, amount);
        if (repaid > 0) {
            amount -= repaid;
            address slack = _slackUnit();
            if (account == slack) badDebt -= repaid;
            else slackExcess = _paySlack(slack, repaid);
            if (cleared) _accounts[account].inDebt = false;
        }
        if (amount == 0) return slackExcess;
        Account storage a = _accounts[account];
        uint256 balance = a.deposit + amount;
        if (balance > type(uint48).max) revert SettlementDepositTooLarge(account, balance);
        a.deposit = uint48(balance);
        totalDeposits += amount;
    }

    /**
     * @dev Pays `amount` to the slack unit: first its uncovered debt (a hole in escrow), then into
     * its deposit. Returns what a 48-bit deposit (about 281 million tokens) cannot hold, for the
     * caller to transfer to its wallet last, so that a full deposit never blocks settlement.
     */
    function _paySlack(address slack, uint256 amount) private returns (uint256 excess) {
        (uint256 repaid, bool cleared) = _repayDebt(slack, amount);
        Account storage sa = _accounts[slack];
        if (repaid > 0) {
            badDebt -= repaid;
            amount -= repaid;
            if (cleared) sa.inDebt = false;
        }
        uint256 credited = Math.min(amount, type(uint48).max - sa.deposit);
        sa.deposit += uint48(credited);
        totalDeposits += credited;
        return amount - credited;
    }

    /// @dev Repays up to `amount` of `account`'s debt; returns how much, and whether none is left.
    function _repayDebt(address account, uint256 amount) private returns (uint256 repaid, bool cleared) {
        uint256 debt = _debt[account];
        repaid = Math.min(debt, amount);
        if (repaid > 0) {
            _debt[account] = debt - repaid;
            emit DebtRepaid(account, repaid, debt - repaid);
        }
        cleared = repaid == debt;
    }

    function _setPrices(uint256 feedIn, uint256 retail) private {
        if (feedIn == 0 || feedIn > retail || retail > MAX_PRICE) revert SettlementBadPrices(feedIn, retail);
        feedInPrice = uint64(feedIn);
        retailPrice = uint64(retail);
        emit PricesSet(feedIn, retail);
    }
}
