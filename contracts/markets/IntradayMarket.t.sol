// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EnergyToken} from "../token/EnergyToken.sol";
import {IMeterLedger} from "../metering/IMeterLedger.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {ParticipantRegistry} from "../registry/ParticipantRegistry.sol";
import {IScheduleSource} from "../settlement/IScheduleSink.sol";
import {ISettlement} from "../settlement/ISettlement.sol";
import {Settlement} from "../settlement/Settlement.sol";
import {TestBalancingSource} from "../test/TestBalancingSource.sol";
import {TestScheduleSource} from "../test/TestScheduleSource.sol";
import {IIntradayMarket} from "./IIntradayMarket.sol";
import {IntradayMarket} from "./IntradayMarket.sol";

// Fuzz tests of settlement with intra-day activations, run by `npx hardhat test solidity`:
// random day-ahead schedules, random activations (from a test balancing source, or cleared by
// the real IntradayMarket from random forecasts and offers) and random meter readings, settled by
// next readings and by random partial and full settlements. After every call: the escrow
// identity, every token in a known wallet, and every bill checked against the test's own meters,
// schedules and activations. Every closed slot conserves energy (demand = supply + slack supplied
// - slack absorbed, and the metered net energy = slack supplied - slack absorbed) and tokens
// (schedule and activation payments + bills - earnings == the slack unit's residual).
// forge-std is not available here: the few cheatcodes are declared below and called at Hardhat's
// cheatcode address; checks are plain `require`s.

bytes32 constant BILLED = keccak256("Billed(address,uint32,int256,uint256,int256,uint256)");
bytes32 constant SLOT_CLOSED = keccak256("SlotClosed(uint32,uint256,uint256,uint256,int256)");
bytes32 constant SCHEDULE_PAID = keccak256("SchedulePaid(uint32,address,uint256)");
bytes32 constant TRANSFER = keccak256("Transfer(address,address,uint256)");
bytes32 constant DEPOSITED = keccak256("Deposited(address,address,uint256)");
bytes32 constant WITHDRAWN = keccak256("Withdrawn(address,uint256)");
bytes32 constant DEBT_REPAID = keccak256("DebtRepaid(address,uint256,uint256)");

/// @dev The cheatcodes these tests use (Foundry-compatible, served by Hardhat's EDR).
interface IntradayCheats {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function warp(uint256 timestamp) external;
    function sign(uint256 privateKey, bytes32 digest) external returns (uint8 v, bytes32 r, bytes32 s);
    function addr(uint256 privateKey) external returns (address);
    function prank(address sender) external;
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory);
}

/// @dev A market (token, registry, settlement with a test schedule source), four prosumers with
/// meter keys, a slack unit and a reserve (a large deposit that never reads: escrow liquidity so
/// that sellers can be paid before the buyers of their slot). The test contract is the admin.
abstract contract IntradayTestMarket {
    IntradayCheats internal constant vm = IntradayCheats(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    uint256 internal constant N = 4;
    uint256 internal constant SLOT_SECONDS = 900;
    uint256 internal constant WINDOW = 300;
    uint256 internal constant FEED_IN = 50_000;
    uint256 internal constant RETAIL = 300_000;
    uint256 internal constant ONE = 1e6;
    uint256 internal constant START = 1_700_000_000;

    EnergyToken internal token;
    ParticipantRegistry internal registry;
    Settlement internal settlement;
    TestScheduleSource internal source;
    address[N] internal accounts;
    uint256[N] internal keys;
    address internal slack;
    address internal reserve;
    /// @dev The first slot whose readings are still ahead when the test starts.
    uint32 internal firstSlot;
    /// @dev The day-ahead awards the source holds for accounts[i] in a slot, and the slot's price.
    mapping(uint32 slot => mapping(uint256 i => int256)) internal awardOf;
    mapping(uint32 slot => uint256) internal awardPrice;
    /// @dev The first broken rule the checks saw, empty if none.
    string public violation;

    function _deployMarket() internal {
        vm.warp(START);
        token = new EnergyToken("Feeder 7 Energy Token", "kWhT", address(this));
        registry = new ParticipantRegistry(address(this));
        settlement = new Settlement(token, registry, address(this), SLOT_SECONDS, WINDOW, FEED_IN, RETAIL);
        for (uint256 i = 0; i < N; ++i) {
            keys[i] = 0xB0B0 + i;
            accounts[i] = address(uint160(0x20000 + i));
            _register(accounts[i], bytes32(i + 1), vm.addr(keys[i]), IParticipantRegistry.Kind.Prosumer);
        }
        slack = address(0x5AC4);
        _register(slack, bytes32("slack"), vm.addr(0x5AC4), IParticipantRegistry.Kind.SlackUnit);
        reserve = address(0x7E5E);
        _register(reserve, bytes32("reserve"), vm.addr(0x7E5E), IParticipantRegistry.Kind.Consumer);
        token.approve(address(settlement), type(uint256).max);
        firstSlot = uint32(block.timestamp / SLOT_SECONDS) + 1;
        source = new TestScheduleSource(token, settlement);
    }

    function _register(address account, bytes32 meterId, address meterKey, IParticipantRegistry.Kind kind) private {
        registry.register(IParticipantRegistry.Registration({account: account, meterId: meterId, meterKey: meterKey, kind: kind}));
    }

    /// @dev Day-ahead awards of `slot` at `price` recorded by the source; the buyers' costs,
    /// ceil(q * price / 1000) each, are minted to it and paid into the slot's pool.
    function _schedule(uint32 slot, int256[N] memory q, uint256 price) internal {
        address[] memory list = new address[](N);
        int256[] memory nets = new int256[](N);
        uint256 paid;
        for (uint256 i = 0; i < N; ++i) {
            list[i] = accounts[i];
            nets[i] = q[i];
            awardOf[slot][i] = q[i];
            if (q[i] > 0) paid += (uint256(q[i]) * price + 999) / 1000;
        }
        awardPrice[slot] = price;
        source.setSchedules(slot, list, nets, price);
        if (paid > 0) {
            token.mint(address(source), paid);
            source.pay(slot, paid);
        }
    }

    /// @dev Balanced awards: accounts whose bit in `sellerMask` is set sell, the others buy
    /// `sizes[i] * scale` Wh; the sellers share the buyers' total (the last one takes the remainder).
    function _balancedAwards(uint8 sellerMask, uint16[N] memory sizes, uint256 scale) internal pure returns (int256[N] memory q) {
        uint256 bought;
        uint256 weights;
        uint256 lastSeller = N;
        for (uint256 i = 0; i < N; ++i) {
            if ((sellerMask >> i) & 1 == 1) {
                weights += uint256(sizes[i]) + 1;
                lastSeller = i;
            } else {
                bought += uint256(sizes[i]) * scale;
            }
        }
        if (lastSeller == N || bought == 0) return q;
        uint256 sold;
        for (uint256 i = 0; i < N; ++i) {
            if ((sellerMask >> i) & 1 == 0) {
                q[i] = int256(uint256(sizes[i]) * scale);
            } else if (i == lastSeller) {
                q[i] = -int256(bought - sold);
            } else {
                uint256 share = bought * (uint256(sizes[i]) + 1) / weights;
                sold += share;
                q[i] = -int256(share);
            }
        }
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        return min + (x % (max - min + 1));
    }

    function _fund(address account, uint256 amount) internal {
        if (amount == 0) return;
        token.mint(address(this), amount);
        settlement.depositFor(account, amount);
    }

    function _opens(uint32 slot) internal pure returns (uint256) {
        return (uint256(slot) + 1) * SLOT_SECONDS;
    }

    function _deadline(uint32 slot) internal pure returns (uint256) {
        return (uint256(slot) + 1) * SLOT_SECONDS + WINDOW;
    }

    /// @dev Signs and submits participant `i`'s reading at the current time.
    function _submit(uint256 i, uint32 slot, uint64 importWh, uint64 exportWh) internal {
        IMeterLedger.Reading memory r = IMeterLedger.Reading({account: accounts[i], slot: slot, importWh: importWh, exportWh: exportWh});
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(keys[i], settlement.readingDigest(r));
        settlement.submitReading(r, rr, bytes32(uint256(s) | (uint256(v - 27) << 255)));
    }

    function _allAccounts() internal view returns (address[] memory list) {
        list = new address[](N);
        for (uint256 i = 0; i < N; ++i) list[i] = accounts[i];
    }

    function _indexOf(address account) internal view returns (uint256) {
        for (uint256 i = 0; i < N; ++i) if (accounts[i] == account) return i;
        return N;
    }

    function _violate(string memory why) internal {
        if (bytes(violation).length == 0) violation = why;
    }

    /// @dev token.balanceOf(settlement) + badDebt == totalDeposits + openPool.
    function _requireIdentity(string memory where) internal view {
        int256 lhs = int256(token.balanceOf(address(settlement)) + settlement.badDebt());
        int256 rhs = int256(settlement.totalDeposits()) + settlement.openPool();
        require(lhs == rhs, string.concat("escrow identity broken: ", where));
    }

    function _requireDepositsSum(string memory where) internal view {
        uint256 sum = settlement.accountState(slack).deposit + settlement.accountState(reserve).deposit;
        for (uint256 i = 0; i < N; ++i) sum += settlement.accountState(accounts[i]).deposit;
        require(sum == settlement.totalDeposits(), string.concat("sum of deposits != totalDeposits: ", where));
    }
}

/// @dev The test's model of activations and its checks of every bill and closed slot.
abstract contract ActivationSettlementBase is IntradayTestMarket {
    uint256 internal constant SLOTS = 3;
    /// @dev Fuzzed 16-bit energies are scaled up so that bills reach and exceed deposits.
    uint64 internal constant SCALE = 8;

    /// @dev The activation of accounts[i] in a slot (+ downward, it buys; - upward, it sells) and the slot's result.
    mapping(uint32 slot => mapping(uint256 i => int256)) internal activation;
    mapping(uint32 slot => uint256) internal upWhOf;
    mapping(uint32 slot => uint256) internal downWhOf;
    mapping(uint32 slot => uint256) internal upPriceOf;
    mapping(uint32 slot => uint256) internal downPriceOf;

    // The meters.
    uint64[N] internal imp;
    uint64[N] internal exp;
    uint64[N] internal lastImp;
    uint64[N] internal lastExp;
    bool[N] internal hasBaseline;
    mapping(uint32 slot => mapping(uint256 i => int256)) internal deviationOf;
    mapping(uint32 slot => int256) internal meteredNet;
    /// @dev Sums of positive and of negative deviations (metered net - schedule - activation) of counted readings.
    mapping(uint32 slot => uint256) internal meterDemand;
    mapping(uint32 slot => uint256) internal meterSupply;
    mapping(uint32 slot => uint256) internal meterReadings;
    mapping(uint32 slot => mapping(uint256 i => bool)) internal countedReading;

    // Tokens per slot, from the logs.
    mapping(uint32 slot => uint256) internal paidIn;
    mapping(uint32 slot => int256) internal billsNet;
    mapping(uint32 slot => uint256) internal earningsPaid;
    mapping(uint32 slot => mapping(uint256 i => uint256)) internal billCount;
    /// @dev Each participant's deposit when `_consumeLogs` (or `_seeDeposits`) last looked.
    uint256[N] internal seenDeposit;
    uint256 internal closedSlots;
    uint256 public activatedBills;

    /// @dev A contract besides the test's wallets that may hold tokens (the balancing source or market).
    address internal balancingHolder;

    /// @dev Signs and submits accounts[i]'s reading of `slot` and counts it in the test's meters.
    function _readMeter(uint256 i, uint32 slot) internal {
        _submit(i, slot, imp[i], exp[i]);
        if (hasBaseline[i]) {
            int256 net = int256(uint256(imp[i] - lastImp[i])) - int256(uint256(exp[i] - lastExp[i]));
            int256 d = net - awardOf[slot][i] - activation[slot][i];
            deviationOf[slot][i] = d;
            if (d > 0) meterDemand[slot] += uint256(d);
            else if (d < 0) meterSupply[slot] += uint256(-d);
            meterReadings[slot] += 1;
            countedReading[slot][i] = true;
            meteredNet[slot] += net;
        }
        hasBaseline[i] = true;
        lastImp[i] = imp[i];
        lastExp[i] = exp[i];
    }

    /// @dev Random energy of one slot: imports and exports of accounts[i] grow by the fuzzed amounts.
    function _deliver(uint256 k, uint16[12] calldata imports, uint16[12] calldata exports) internal {
        for (uint256 i = 0; i < N; ++i) {
            imp[i] += uint64(imports[(k - 1) * N + i]) * SCALE;
            exp[i] += uint64(exports[(k - 1) * N + i]) * SCALE;
        }
    }

    /// @dev Every participant reads `slot`, in an order drawn from `seed`.
    function _readAll(uint32 slot, uint256 seed) internal {
        uint256 offset = seed % N;
        for (uint256 j = 0; j < N; ++j) {
            _readMeter((j + offset) % N, slot);
            _check("after a reading");
        }
    }

    /// @dev After `slot`'s deadline, maybe settles two random accounts of it.
    function _maybePartialSettle(uint32 slot, uint256 seed) internal {
        vm.warp(_deadline(slot) + 1);
        if (seed & 1 == 0) return;
        address[] memory some = new address[](2);
        some[0] = accounts[(seed >> 1) % N];
        some[1] = accounts[(seed >> 9) % N];
        settlement.settle(slot, some);
        _check("after a partial settle");
    }

    /// @dev Settles every slot after the last deadline, in an order drawn from `seed`, and checks the end state.
    function _settleAllAndCheck(uint256 seed) internal {
        uint32 last = firstSlot + uint32(SLOTS);
        vm.warp(_deadline(last) + 1);
        for (uint256 j = 0; j < SLOTS; ++j) {
            settlement.settle(firstSlot + 1 + uint32((seed % SLOTS + j) % SLOTS), _allAccounts());
            _check("after a full settle");
        }
        _requireDepositsSum("at the end");
        require(settlement.openPool() == 0, "open pool left once every slot is closed");
        require(closedSlots == SLOTS, "not every slot closed (or the logs were not recorded)");
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            ISettlement.SlotView memory s = settlement.slotState(slot);
            require(s.closed && s.billed == s.readings && s.readings == N, "a slot not closed with every reading billed");
            require(s.upWh == upWhOf[slot] && s.downWh == downWhOf[slot], "slot activations != the balancing result");
            for (uint256 i = 0; i < N; ++i) require(billCount[slot][i] == 1, "a reading not billed exactly once");
        }
    }

    /// @dev Consumes the recorded logs and checks the invariants after one step.
    function _check(string memory where) internal {
        _consumeLogs(vm.getRecordedLogs());
        require(bytes(violation).length == 0, violation);
        _requireIdentity(where);
        uint256 sum = token.balanceOf(address(this)) + token.balanceOf(address(settlement)) + token.balanceOf(slack)
            + token.balanceOf(reserve) + token.balanceOf(address(source)) + token.balanceOf(balancingHolder);
        for (uint256 i = 0; i < N; ++i) sum += token.balanceOf(accounts[i]);
        require(sum == token.totalSupply(), string.concat("sum of balances != total supply: ", where));
    }

    /// @dev Consumes one step's logs: bills and closed slots against the test's meters, and every
    /// participant's deposit change against its deposits, withdrawals, debt repaid and bills
    /// (earnings are paid into deposits: settlement sends a participant tokens only when it withdraws).
    function _consumeLogs(IntradayCheats.Log[] memory logs) internal {
        int256[N] memory change;
        uint256[N] memory sent;
        uint256[N] memory withdrawn;
        for (uint256 j = 0; j < logs.length; ++j) {
            IntradayCheats.Log memory log = logs[j];
            if (log.topics.length < 2) continue;
            uint256 i = _indexOf(address(uint160(uint256(log.topics[1]))));
            if (log.emitter == address(token) && log.topics[0] == TRANSFER) {
                uint256 k = _indexOf(address(uint160(uint256(log.topics[2]))));
                if (address(uint160(uint256(log.topics[1]))) == address(settlement) && k < N) sent[k] += abi.decode(log.data, (uint256));
                continue;
            }
            if (log.emitter != address(settlement)) continue;
            bytes32 topic = log.topics[0];
            if (topic == BILLED) {
                _consumeBill(log, change);
            } else if (topic == SLOT_CLOSED) {
                _consumeClose(log);
            } else if (topic == SCHEDULE_PAID) {
                paidIn[uint32(uint256(log.topics[1]))] += abi.decode(log.data, (uint256));
            } else if (topic == DEPOSITED && i < N) {
                change[i] += int256(abi.decode(log.data, (uint256)));
            } else if (topic == WITHDRAWN && i < N) {
                uint256 amount = abi.decode(log.data, (uint256));
                change[i] -= int256(amount);
                withdrawn[i] += amount;
            } else if (topic == DEBT_REPAID && i < N) {
                (uint256 repaid,) = abi.decode(log.data, (uint256, uint256));
                change[i] -= int256(repaid);
            }
        }
        for (uint256 i = 0; i < N; ++i) {
            if (sent[i] != withdrawn[i]) _violate("settlement sent a participant tokens it did not withdraw");
            uint256 deposit = settlement.accountState(accounts[i]).deposit;
            if (int256(deposit) - int256(seenDeposit[i]) != change[i]) {
                _violate("deposit change != deposits - withdrawals - debt repaid + earnings - deviation paid");
            }
            seenDeposit[i] = deposit;
        }
    }

    /// @dev Takes the participants' deposits as they are now (call after vm.recordLogs()).
    function _seeDeposits() internal {
        for (uint256 i = 0; i < N; ++i) seenDeposit[i] = settlement.accountState(accounts[i]).deposit;
    }

    function _consumeBill(IntradayCheats.Log memory log, int256[N] memory change) private {
        address account = address(uint160(uint256(log.topics[1])));
        uint32 slot = uint32(uint256(log.topics[2]));
        (int256 deviationWh, uint256 earned, int256 amount, uint256 shortfall) = abi.decode(log.data, (int256, uint256, int256, uint256));
        uint256 i = _indexOf(account);
        if (i == N || !countedReading[slot][i]) return _violate("billed without a counted reading");
        billCount[slot][i] += 1;
        if (billCount[slot][i] > 1) _violate("an account billed twice for a slot");
        if (deviationWh != deviationOf[slot][i]) _violate("deviation != metered - schedule - activation");
        int256 q = awardOf[slot][i];
        int256 a = activation[slot][i];
        uint256 expectedEarned = (q < 0 ? uint256(-q) * awardPrice[slot] / 1000 : 0) + (a < 0 ? uint256(-a) * upPriceOf[slot] / 1000 : 0);
        if (earned != expectedEarned) _violate("earnings != scheduled sales + upward activation at their prices");
        if (amount != _deviationAmount(slot, deviationWh)) _violate("the deviation's amount is not the real-time price's");
        // Earnings and revenue go into the deposit; the deviation's cost comes out of it, except
        // what could not be paid.
        change[i] += int256(earned) - amount + int256(shortfall);
        billsNet[slot] += amount - int256(shortfall);
        earningsPaid[slot] += earned;
        if (a != 0) activatedBills += 1;
    }

    /// @dev The deviation bill (+) or revenue (-) by the settlement's real-time pricing, activations in the slot's totals.
    function _deviationAmount(uint32 slot, int256 d) private view returns (int256) {
        ISettlement.SlotView memory s = settlement.slotState(slot);
        uint256 demand = meterDemand[slot] + downWhOf[slot];
        uint256 supply = meterSupply[slot] + upWhOf[slot];
        uint256 price = demand + supply == 0 ? (FEED_IN + RETAIL) / 2 : FEED_IN + (RETAIL - FEED_IN) * demand / (demand + supply);
        if (s.price != price) return type(int256).min; // the slot's price is not the rule's: no amount matches
        uint256 local = demand < supply ? demand : supply;
        if (d > 0) {
            uint256 n = uint256(d);
            uint256 localWh = n * local / demand;
            uint256 p = upWhOf[slot] > 0 && upPriceOf[slot] > price ? upPriceOf[slot] : price;
            return int256((localWh * p + (n - localWh) * RETAIL + 999) / 1000);
        } else if (d < 0) {
            uint256 n = uint256(-d);
            uint256 localWh = n * local / supply;
            uint256 p = downWhOf[slot] > 0 && downPriceOf[slot] < price ? downPriceOf[slot] : price;
            return -int256((localWh * p + (n - localWh) * FEED_IN) / 1000);
        }
        return 0;
    }

    function _consumeClose(IntradayCheats.Log memory log) private {
        uint32 slot = uint32(uint256(log.topics[1]));
        (uint256 localWh, uint256 supplied, uint256 absorbed, int256 slackAmount) = abi.decode(log.data, (uint256, uint256, uint256, int256));
        closedSlots += 1;
        uint256 demand = meterDemand[slot] + downWhOf[slot];
        uint256 supply = meterSupply[slot] + upWhOf[slot];
        if (demand + absorbed != supply + supplied) _violate("demand + slack absorbed != supply + slack supplied");
        if (meteredNet[slot] != int256(supplied) - int256(absorbed)) _violate("metered net energy != slack supplied - slack absorbed");
        if (localWh > demand || localWh > supply) _violate("local energy beyond demand or supply");
        if (int256(paidIn[slot]) + billsNet[slot] - int256(earningsPaid[slot]) != slackAmount) {
            _violate("schedule and activation payments + bills - earnings != slack residual");
        }
        if (meterReadings[slot] != N) _violate("slot closed before all readings were counted");
    }
}

/// @dev Activations from the test balancing source: any size, either direction or both, any price.
contract IntradaySettlementFuzzTest is ActivationSettlementBase {
    TestBalancingSource internal balancing;

    function setUp() public {
        _deployMarket();
        balancing = new TestBalancingSource(token, settlement, source);
        balancingHolder = address(balancing);
        settlement.setMarkets(source, balancing);
    }

    /// Three slots, each with random balanced day-ahead awards at a random price, then random
    /// activations (none, upward, downward, or both directions at once, which no correct market
    /// produces but settlement must still balance) at random balancing prices, the downward
    /// activations' cost paid into the slot's pool; random meter energy read by everyone in a
    /// random order, random partial settlements, and a full settlement in random order.
    function testFuzz_activationsConserveTokensAndEnergy(
        uint40[N] calldata deposits,
        uint16[12] calldata imports,
        uint16[12] calldata exports,
        uint16[12] calldata awardSizes,
        uint8[3] calldata sellerMasks,
        uint48[3] calldata prices,
        uint16[12] calldata activationSizes,
        uint8[3] calldata activationModes,
        uint48[6] calldata balancingPrices,
        uint256 seed
    ) public {
        vm.recordLogs();
        _seeDeposits();
        _fund(reserve, type(uint48).max);
        for (uint256 i = 0; i < N; ++i) _fund(accounts[i], deposits[i] % (30 * ONE));
        _fund(slack, uint256(deposits[0]) % (300 * ONE));
        _check("after deposits");

        vm.warp(_opens(firstSlot) + 1);
        for (uint256 i = 0; i < N; ++i) {
            imp[i] = uint64(i) * 100_000;
            exp[i] = uint64(i) * 7_000;
            _readMeter(i, firstSlot);
        }
        _check("after the baselines");
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            uint16[N] memory sizes;
            for (uint256 i = 0; i < N; ++i) sizes[i] = awardSizes[(k - 1) * N + i];
            _schedule(slot, _balancedAwards(sellerMasks[k - 1], sizes, SCALE), _price(prices[k - 1]));
            _check("after a schedule payment");
            _activate(slot, k, activationSizes, activationModes[k - 1], balancingPrices, seed);
            _check("after the activations");
            _deliver(k, imports, exports);
            vm.warp(_opens(slot) + 1);
            _readAll(slot, seed >> (k * 8));
            _maybePartialSettle(slot, seed >> (64 + k * 16));
        }
        _settleAllAndCheck(seed >> 160);
    }

    /// The fuzz run above with fixed inputs where every slot has activations in both directions:
    /// they reach the bills (a guard against a fuzz that never activates anything).
    function test_activationsReachTheBills() public {
        uint40[N] memory deposits = [uint40(20 * ONE), uint40(20 * ONE), uint40(1), uint40(20 * ONE)];
        uint16[12] memory imports;
        uint16[12] memory exports;
        uint16[12] memory sizes;
        uint16[12] memory activationSizes;
        for (uint256 j = 0; j < 12; ++j) {
            imports[j] = uint16(100 + 37 * j);
            exports[j] = uint16(j % 3 == 0 ? 400 : 10);
            sizes[j] = uint16(50 + 11 * j);
            activationSizes[j] = uint16(30 + 7 * j);
        }
        uint8[3] memory masks = [uint8(0x3), uint8(0x5), uint8(0x8)];
        uint48[3] memory prices = [uint48(120_001), uint48(80_002), uint48(250_003)];
        uint8[3] memory modes = [uint8(0x3F), uint8(0x3D), uint8(0x3E)]; // both, up, down; everyone activated
        uint48[6] memory balancingPrices = [uint48(90_001), uint48(280_002), uint48(310_003), uint48(60_001), uint48(70_002), uint48(200_003)];
        this.testFuzz_activationsConserveTokensAndEnergy(
            deposits, imports, exports, sizes, masks, prices, activationSizes, modes, balancingPrices, uint256(keccak256("seed"))
        );
        require(activatedBills >= 8, "activations did not reach the bills");
    }

    /// @dev Mostly around the slack unit's prices, one time in four anywhere from 1 to 10^10 per kWh.
    function _price(uint48 x) internal pure returns (uint256) {
        return x % 4 == 0 ? _bound(x, 1, 10 ** 10) : _bound(x, FEED_IN / 2, 2 * RETAIL);
    }

    function _activate(
        uint32 slot,
        uint256 k,
        uint16[12] calldata activationSizes,
        uint8 mode,
        uint48[6] calldata balancingPrices,
        uint256 seed
    ) internal {
        uint256 direction = mode & 3; // 0 none, 1 up, 2 down, 3 both
        uint256 upPrice = _price(balancingPrices[2 * (k - 1)]);
        uint256 downPrice = _price(balancingPrices[2 * (k - 1) + 1]);
        address[] memory list = new address[](N);
        int256[] memory wh = new int256[](N);
        uint256 up;
        uint256 down;
        uint256 cost;
        for (uint256 i = 0; i < N; ++i) {
            list[i] = accounts[i];
            if (direction == 0 || (mode >> (2 + i)) & 1 == 0) continue;
            int256 size = int256(uint256(activationSizes[(k - 1) * N + i]) * SCALE);
            bool isUp = direction == 1 || (direction == 3 && (seed >> (200 + (k - 1) * N + i)) & 1 == 1);
            wh[i] = isUp ? -size : size;
            activation[slot][i] = wh[i];
            if (isUp) {
                up += uint256(size);
            } else {
                down += uint256(size);
                cost += (uint256(size) * downPrice + 999) / 1000;
            }
        }
        balancing.setActivations(slot, list, wh, upPrice, downPrice);
        upWhOf[slot] = up;
        downWhOf[slot] = down;
        upPriceOf[slot] = up > 0 ? upPrice : 0;
        downPriceOf[slot] = down > 0 ? downPrice : 0;
        if (cost > 0) {
            token.mint(address(balancing), cost);
            balancing.pay(slot, cost);
        }
    }
}

/// @dev Activations cleared by the real IntradayMarket (its day-ahead source is the test schedule source).
contract IntradayMarketSettlementFuzzTest is ActivationSettlementBase {
    IntradayMarket internal market;

    struct ModelOffer {
        bool placed;
        bool isUp;
        uint40 qtyWh;
        uint48 price;
        uint32 index;
    }

    mapping(uint32 slot => mapping(uint256 i => ModelOffer)) internal offers;
    mapping(uint32 slot => uint32) internal bookSize;
    mapping(uint32 slot => int256) internal imbalance;

    function setUp() public {
        _deployMarket();
        market = new IntradayMarket(token, registry, IScheduleSource(address(source)), settlement, address(this), SLOT_SECONDS, 3600, 900, FEED_IN, RETAIL);
        balancingHolder = address(market);
        settlement.setMarkets(source, market);
        for (uint256 i = 0; i < N; ++i) {
            token.mint(accounts[i], 1_000 * ONE);
            vm.prank(accounts[i]);
            token.approve(address(market), type(uint256).max);
        }
    }

    /// Three slots: random balanced day-ahead awards at random prices; an hour ahead, random
    /// forecasts (schedule plus a random deviation) and random flexibility offers from the four
    /// participants, each slot cleared by IntradayMarket at its gate closure (with a clearing the
    /// test computes itself) so that activations join the schedules; random meter energy read by
    /// everyone, random partial settlements and a full settlement in random order. The market's
    /// escrow stays its token balance throughout.
    function testFuzz_clearedActivationsConserveTokensAndEnergy(
        uint40[N] calldata deposits,
        uint16[12] calldata imports,
        uint16[12] calldata exports,
        uint16[12] calldata awardSizes,
        uint8[3] calldata sellerMasks,
        uint48[3] calldata prices,
        int16[12] calldata deviations,
        uint16[12] calldata offerSizes,
        uint48[12] calldata offerPrices,
        uint256 seed
    ) public {
        vm.recordLogs();
        _seeDeposits();
        _fund(reserve, type(uint48).max);
        for (uint256 i = 0; i < N; ++i) _fund(accounts[i], deposits[i] % (30 * ONE));
        _fund(slack, uint256(deposits[0]) % (300 * ONE));
        _check("after deposits");

        // An hour ahead of the first slot: every window is open (slot f+1 closes at its start - 900).
        uint32 f = firstSlot;
        vm.warp((uint256(f) + 1) * SLOT_SECONDS - 901);
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint16[N] memory sizes;
            for (uint256 i = 0; i < N; ++i) sizes[i] = awardSizes[(k - 1) * N + i];
            _schedule(f + uint32(k), _balancedAwards(sellerMasks[k - 1], sizes, SCALE), _bound(prices[k - 1], FEED_IN / 2, 2 * RETAIL));
        }
        _check("after the schedule payments");
        _forecastAndOffer(deviations, offerSizes, offerPrices, seed);
        _check("after forecasts and offers");

        vm.warp((uint256(f) + 1) * SLOT_SECONDS - 900);
        _clear(f + 1);
        vm.warp(_opens(f) + 1);
        for (uint256 i = 0; i < N; ++i) {
            imp[i] = uint64(i) * 100_000;
            exp[i] = uint64(i) * 7_000;
            _readMeter(i, f);
        }
        _check("after the baselines");
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = f + uint32(k);
            // Now is after the start of `slot`: the next slot is in its clearing window.
            if (k < SLOTS) _clear(slot + 1);
            _deliver(k, imports, exports);
            vm.warp(_opens(slot) + 1);
            _readAll(slot, seed >> (k * 8));
            _maybePartialSettle(slot, seed >> (64 + k * 16));
        }
        _settleAllAndCheck(seed >> 160);
        require(token.balanceOf(address(market)) == 0 && market.totalEscrow() == 0, "escrow left in the market");
    }

    /// The fuzz run above with fixed inputs where every slot is short, long, short in turn and every
    /// participant offers in the needed direction: activations reach the bills.
    function test_clearedActivationsReachTheBills() public {
        uint40[N] memory deposits = [uint40(20 * ONE), uint40(1), uint40(20 * ONE), uint40(20 * ONE)];
        uint16[12] memory imports;
        uint16[12] memory exports;
        uint16[12] memory sizes;
        int16[12] memory deviations;
        uint16[12] memory offerSizes;
        uint48[12] memory offerPrices;
        uint256 seed = uint256(keccak256("seed")) & ~uint256(0xFFF);
        for (uint256 j = 0; j < 12; ++j) {
            imports[j] = uint16(100 + 37 * j);
            exports[j] = uint16(j % 3 == 0 ? 400 : 10);
            sizes[j] = uint16(50 + 11 * j);
            bool short = j / N != 1;
            deviations[j] = short ? int16(int256(60 + j)) : -int16(int256(60 + j));
            offerSizes[j] = uint16(40 + 3 * j);
            offerPrices[j] = uint48(1_000 * j + 7);
            if (short) seed |= 1 << j; // upward offers in the short slots
        }
        uint8[3] memory masks = [uint8(0x3), uint8(0x5), uint8(0x8)];
        uint48[3] memory prices = [uint48(120_001), uint48(80_002), uint48(250_003)];
        this.testFuzz_clearedActivationsConserveTokensAndEnergy(deposits, imports, exports, sizes, masks, prices, deviations, offerSizes, offerPrices, seed);
        require(activatedBills >= 8, "activations did not reach the bills");
        (uint256 upWh,,,) = market.slotResult(firstSlot + 1);
        (, uint256 downWh,,) = market.slotResult(firstSlot + 2);
        require(upWh > 0 && downWh > 0, "no activation in a short or long slot");
    }

    function _forecastAndOffer(int16[12] calldata deviations, uint16[12] calldata offerSizes, uint48[12] calldata offerPrices, uint256 seed) internal {
        uint256 offset = (seed >> 240) % N;
        for (uint256 j = 0; j < N; ++j) {
            uint256 i = (j + offset) % N;
            int32[] memory nets = new int32[](SLOTS);
            IIntradayMarket.OfferInput[] memory inputs = new IIntradayMarket.OfferInput[](SLOTS);
            uint256 count;
            for (uint256 k = 1; k <= SLOTS; ++k) {
                uint32 slot = firstSlot + uint32(k);
                int256 deviation = int256(deviations[(k - 1) * N + i]) * int256(uint256(SCALE));
                nets[k - 1] = int32(awardOf[slot][i] + deviation);
                imbalance[slot] += deviation;
                uint256 qty = uint256(offerSizes[(k - 1) * N + i]) * SCALE;
                if (qty == 0) continue;
                bool isUp = (seed >> ((k - 1) * N + i)) & 1 == 1;
                uint48 price = uint48(_bound(offerPrices[(k - 1) * N + i], FEED_IN, RETAIL));
                inputs[count++] = IIntradayMarket.OfferInput({slot: slot, isUp: isUp, qtyWh: uint40(qty), price: price});
                offers[slot][i] = ModelOffer({placed: true, isUp: isUp, qtyWh: uint40(qty), price: price, index: bookSize[slot]++});
            }
            assembly ("memory-safe") {
                mstore(inputs, count)
            }
            vm.prank(accounts[i]);
            market.submitForecasts(accounts[i], firstSlot + 1, nets);
            vm.prank(accounts[i]);
            market.placeOffers(accounts[i], inputs);
            require(token.balanceOf(address(market)) == market.totalEscrow(), "market balance != totalEscrow");
        }
        for (uint256 k = 1; k <= SLOTS; ++k) {
            uint32 slot = firstSlot + uint32(k);
            require(market.book(slot).imbalanceWh == imbalance[slot], "imbalance != sum of forecast deviations");
        }
    }

    /// @dev Clears `slot` with the test's own clearing of its model book and records the activations.
    function _clear(uint32 slot) internal {
        int256 r = imbalance[slot];
        uint256[N] memory ups;
        uint256[N] memory downs;
        uint256 nu;
        uint256 nd;
        for (uint256 i = 0; i < N; ++i) {
            ModelOffer memory o = offers[slot][i];
            if (!o.placed) continue;
            if (o.isUp) ups[nu++] = i;
            else downs[nd++] = i;
        }
        _sort(slot, ups, nu, true);
        _sort(slot, downs, nd, false);
        IIntradayMarket.Clearing memory c;
        c.slot = slot;
        c.ups = new address[](nu);
        c.downs = new address[](nd);
        c.upActivationsWh = new uint40[](nu);
        c.downActivationsWh = new uint40[](nd);
        uint256 need = r < 0 ? uint256(-r) : uint256(r);
        for (uint256 k = 0; k < nu; ++k) c.ups[k] = accounts[ups[k]];
        for (uint256 k = 0; k < nd; ++k) c.downs[k] = accounts[downs[k]];
        if (r != 0) {
            bool up = r > 0;
            uint256[N] memory side = up ? ups : downs;
            uint256 len = up ? nu : nd;
            for (uint256 k = 0; k < len && need > 0; ++k) {
                ModelOffer memory o = offers[slot][side[k]];
                uint256 take = o.qtyWh < need ? o.qtyWh : need;
                need -= take;
                c.volumeWh += uint64(take);
                c.price = o.price;
                if (up) c.upActivationsWh[k] = uint40(take);
                else c.downActivationsWh[k] = uint40(take);
                activation[slot][side[k]] = up ? -int256(take) : int256(take);
            }
            if (up) {
                upWhOf[slot] = c.volumeWh;
                upPriceOf[slot] = c.volumeWh > 0 ? c.price : 0;
            } else {
                downWhOf[slot] = c.volumeWh;
                downPriceOf[slot] = c.volumeWh > 0 ? c.price : 0;
            }
        }
        market.clear(c);
        require(token.balanceOf(address(market)) == market.totalEscrow(), "market balance != totalEscrow after clearing");
        _check("after a clearing");
    }

    /// @dev Insertion sort of the first `len` participant indices by limit (ascending for up, descending for down), then book index.
    function _sort(uint32 slot, uint256[N] memory list, uint256 len, bool up) private view {
        for (uint256 a = 1; a < len; ++a) {
            uint256 x = list[a];
            uint256 b = a;
            while (b > 0 && _before(offers[slot][x], offers[slot][list[b - 1]], up)) {
                list[b] = list[b - 1];
                --b;
            }
            list[b] = x;
        }
    }

    function _before(ModelOffer memory x, ModelOffer memory y, bool up) private pure returns (bool) {
        if (x.price != y.price) return up ? x.price < y.price : x.price > y.price;
        return x.index < y.index;
    }
}
